"""The effect-of-T experiment as a user runs it: one run of its experiment file, and the table script on a sweep."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "effect_of_T.py"
# A run small enough for a test: about a second on a CPU.
TINY = ["task.classes=10", "task.dim=8", "trainer.steps=4", "trainer.log_every=2", "trainer.val_every=2", "device=cpu"]


def test_the_experiment_writes_a_summary_with_test_accuracy(bilevel, tmp_path):
    bilevel("train", "experiment=effect_of_T", "hypergrad.T=3", *TINY)
    (run,) = (tmp_path / "outputs" / "train").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "linear_representation" and summary["T"] == 3 and summary["exact"] is False
    assert 0 <= summary["test_acc"] <= 100 and summary["outer_objective"] > 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [2, 4] and {"s_per_iteration", "train_acc", "val_loss"} <= lines[-1].keys()


def test_the_script_tabulates_and_plots_a_sweep(bilevel, tmp_path):
    sweep, out = tmp_path / "sweep", tmp_path / "out"
    bilevel("train", "-m", "experiment=effect_of_T", "hypergrad.T=2", "task.exact=false,true", *TINY,
            f"hydra.sweep.dir={sweep}")
    done = subprocess.run([sys.executable, str(SCRIPT), "--from", str(sweep), "--out", str(out)],
                          capture_output=True, text=True, timeout=120, check=True)
    table = (sweep / "effect_of_T.md").read_text()
    rows = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ") and "reached" not in line]
    assert rows == ["| 2 (reverse)", "| exact (closed form)"] and table in done.stdout
    assert (out / "effect_of_T.md").read_text() == table
    for directory in (sweep, out):
        assert (directory / "effect_of_T.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
