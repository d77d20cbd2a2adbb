"""A run directory has one writer: a second `bilevel train` in it stops with one line, a killed one leaves no lock."""

import os
import signal
import subprocess
import sys

import pytest

from bilevel_cli.engine.run_lock import claim_run_dir
from bilevel_cli.errors import UserError

HOLD = """
import sys, time
from pathlib import Path
from bilevel_cli.engine.run_lock import claim_run_dir
with claim_run_dir(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process that holds tmp_path/run, as a running `bilevel train` does."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield run_dir, process
    process.kill()
    process.wait()


def test_a_held_run_directory_is_refused_and_a_killed_holder_leaves_no_lock(holder):
    run_dir, process = holder
    with pytest.raises(UserError) as refused, claim_run_dir(run_dir):
        pass
    assert str(refused.value).startswith(f"{run_dir} is in use by another bilevel train (pid {process.pid} on ")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    with claim_run_dir(run_dir):
        assert (run_dir / ".lock").read_text() == f"pid {os.getpid()} on {os.uname().nodename}"
    with claim_run_dir(run_dir):  # released when the run ends
        pass


@pytest.mark.slow
def test_train_in_a_directory_another_run_holds_writes_nothing_there(bilevel, holder):
    run_dir, process = holder
    done = bilevel("train", "trainer.steps=2", f"hydra.run.dir={run_dir}", check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"bilevel: error: {run_dir} is in use by another bilevel train (pid {process.pid} on {os.uname().nodename}); "
        "wait for it to end, or give this run another directory with hydra.run.dir=..."]
    assert not {"config.yaml", "metrics.jsonl", "last.pt", "summary.json"} & {p.name for p in run_dir.iterdir()}
