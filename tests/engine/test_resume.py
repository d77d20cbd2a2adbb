"""Runs killed, interrupted or faulted at chosen points, then resumed: nothing lost, nothing changed.

Each faulty run is a real `bilevel train` process with one function wrapped to misbehave on its n-th call
(SIGKILL itself, send itself Ctrl-C, return NaN, raise out-of-memory): the faults land exactly where the test
says, not where a timer happens to."""

import json
import os
import shlex

import pytest
from omegaconf import OmegaConf

pytestmark = pytest.mark.slow

TINY = ["backbone.channels=8", "task.meta_batch=2", "trainer.steps=6", "trainer.log_every=1", "trainer.val_every=2",
        "trainer.val_episodes=4", "trainer.test_episodes=6", "trainer.eval_batch=4", "device=cpu",
        "inner.learn_lr=true"]

# argv: target ("hyper_iteration" | "validate" | "save"), fault ("kill" | "interrupt" | "nan" | "oom"), the
# 1-based calls on which it strikes (comma-separated), then the `bilevel train` overrides.
FAULTY = """
import os, signal, sys
import torch
from bilevel_cli.cli import main
from bilevel_cli.engine import checkpoint
from bilevel_cli.tasks.hyper_representation import HyperRepresentation

target, fault, calls = sys.argv[1], sys.argv[2], {int(n) for n in sys.argv[3].split(",")}
count = 0

def faulty(function):
    def wrapped(*args, **kwargs):
        global count
        count += 1
        if count in calls:
            if fault == "kill" and target == "save":  # half a file on disk, then death mid-write
                file = args[1]  # torch.save(state, file): checkpoint.save's open temporary file
                file.write(b"PK\\x03\\x04 half a checkpoint")
                file.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            if fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if fault == "interrupt":
                os.kill(os.getpid(), signal.SIGINT)  # the handler notes it; this hyper-iteration still finishes
            if fault == "oom":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        result = function(*args, **kwargs)
        if fault == "nan" and count in calls:
            loss, metrics = result
            return loss * float("nan"), metrics
        return result
    return wrapped

if target == "save":
    checkpoint.torch.save = faulty(checkpoint.torch.save)
else:
    setattr(HyperRepresentation, target, faulty(getattr(HyperRepresentation, target)))
main(["train", *sys.argv[4:]])
"""


@pytest.fixture
def train(run_python):
    """Runs `bilevel train` (with a fault when `fault` is given) in `run_dir`; returns the CompletedProcess."""
    def run(run_dir, *overrides, fault=()):
        command = ["-c", FAULTY, *fault] if fault else ["-m", "bilevel_cli", "train"]
        return run_python(*command, *TINY, f"hydra.run.dir={run_dir}", *overrides)
    return run


@pytest.fixture
def run_printed(run_python):
    """Runs the `bilevel train ...` command that ends a stopped run's last line, as a user pasting it would."""
    def run(stopped):
        words = shlex.split(stopped.stderr.strip().splitlines()[-1].rsplit(": ", 1)[1])
        assert words[:2] == ["bilevel", "train"]
        return run_python("-m", "bilevel_cli", *words[1:])
    return run


def _summary(run_dir):
    return _summary_file(run_dir / "summary.json")


def _summary_file(path):
    summary = json.loads(path.read_text())
    del summary["wall_time_s"]  # the one figure that depends on the interruption by nature
    return summary


def _metrics(run_dir):
    """metrics.jsonl without its timings."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if k not in ("s_per_iteration", "episodes_per_s", "wall_time")} for m in lines]


@pytest.fixture
def uninterrupted(train, tmp_path):
    run_dir = tmp_path / "uninterrupted"
    assert train(run_dir).returncode == 0
    return run_dir


@pytest.mark.parametrize("target, calls", [
    ("hyper_iteration", "3"),  # during training, after the first checkpoint (step 2)
    ("hyper_iteration", "1"),  # before any checkpoint: the rerun starts over
    ("validate", "2"),         # during the second validation (step 4)
    ("save", "3"),             # while writing a checkpoint at step 4 (the first two are best.pt and last.pt at 2)
])
def test_a_killed_run_resumed_ends_exactly_as_an_uninterrupted_one(train, uninterrupted, tmp_path, target, calls):
    run_dir = tmp_path / "killed"
    killed = train(run_dir, fault=(target, "kill", calls))
    assert killed.returncode == -9 and not (run_dir / "summary.json").exists()
    resumed = train(run_dir)  # a rerun in the same directory continues it
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _summary(run_dir) == _summary(uninterrupted)
    assert _metrics(run_dir) == _metrics(uninterrupted)  # continued, not duplicated


def test_ctrl_c_checkpoints_and_exits_then_the_command_it_prints_continues(train, run_printed, uninterrupted,
                                                                              tmp_path):
    run_dir = tmp_path / "interrupted"
    stopped = train(run_dir, fault=("hyper_iteration", "interrupt", "3"))
    assert stopped.returncode == 130
    assert stopped.stderr.strip().splitlines()[-1] == (
        "bilevel: stopped by SIGINT at step 3; checkpoint saved; continue with: "
        f"bilevel train {' '.join(TINY)} hydra.run.dir={run_dir}")
    assert not (run_dir / "summary.json").exists()
    assert run_printed(stopped).returncode == 0
    assert _summary(run_dir) == _summary(uninterrupted)
    assert _metrics(run_dir) == _metrics(uninterrupted)


def test_a_sweep_job_stopped_by_ctrl_c_continues_with_the_command_it_prints(run_python, run_printed, uninterrupted,
                                                                            tmp_path):
    # The job's directory is named after its overrides ('=' and ','), and its experiment is in the user's own -cd.
    (tmp_path / "mine" / "experiment").mkdir(parents=True)
    (tmp_path / "mine" / "experiment" / "tiny.yaml").write_text(
        "# @package _global_\n" + OmegaConf.to_yaml(OmegaConf.from_dotlist(TINY)))
    stopped = run_python("-c", FAULTY, "hyper_iteration", "interrupt", "3", "-m", "-cd", "mine",
                          "experiment=tiny", "seed=0", "hydra.sweep.dir=sweep")
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    [job] = (tmp_path / "sweep").glob("0_*")
    assert job.name == "0_experiment=tiny,seed=0" and not (job / "summary.json").exists()
    assert run_printed(stopped).returncode == 0
    assert _summary(job) == _summary(uninterrupted)
    assert _metrics(job) == _metrics(uninterrupted)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, a device that is always full")
def test_a_full_disk_at_the_summary_loses_nothing(train, run_printed, uninterrupted, tmp_path):
    run_dir = tmp_path / "full"
    run_dir.mkdir()
    (run_dir / "summary.json.tmp").symlink_to("/dev/full")  # the disk is full when the summary is written
    full = train(run_dir)
    assert full.returncode == 2
    assert full.stderr.strip().splitlines()[-1] == (
        f"bilevel: error: cannot write {run_dir / 'summary.json'} (No space left on device); the checkpoints are "
        "intact: make room, then rerun, which tests its best.pt again and writes the summary: "
        f"bilevel train {' '.join(TINY)} hydra.run.dir={run_dir}")
    assert "test accuracy" in full.stdout and not (run_dir / "summary.json").exists()  # the result was shown
    assert run_printed(full).returncode == 0  # room made: the failed write removed its temporary file
    assert _summary(run_dir) == _summary(uninterrupted)


def test_resume_refuses_a_changed_config_and_a_missing_checkpoint(train, tmp_path):
    run_dir = tmp_path / "run"
    assert train(run_dir, fault=("validate", "kill", "2")).returncode == -9
    changed = train(run_dir, "hypergrad.T=3")
    assert changed.returncode == 2 and changed.stderr.strip().splitlines() == [
        f"bilevel: error: cannot resume {run_dir / 'last.pt'}: the config differs from the checkpoint's in "
        "hypergrad.T (hypergrad.T: 5 there, 3 now); drop those overrides or start a new run in another directory"]
    fresh = train(run_dir, "resume=false")
    assert fresh.returncode == 2 and "pass resume=true to continue it" in fresh.stderr
    assert train(run_dir, "trainer.steps=8").returncode == 0  # running longer is allowed
    assert json.loads((run_dir / "summary.json").read_text())["last_step"] == 8
    missing = train(tmp_path / "nothing_there", "resume=true")
    assert missing.returncode == 2 and "does not exist" in missing.stderr.strip().splitlines()[-1]


def test_non_finite_steps_are_skipped_and_logged_then_the_run_stops(train, tmp_path):
    run_dir = tmp_path / "nan"
    survived = train(run_dir, fault=("hyper_iteration", "nan", "2,3"))
    assert survived.returncode == 0, survived.stderr[-2000:]
    skipped = {m["step"]: m.get("skipped_nonfinite") for m in _metrics(run_dir)}
    assert skipped[2] == 1 and skipped[3] == 2 and skipped[4] is None
    stopped = train(tmp_path / "nan_stop", "trainer.max_bad_steps=2", fault=("hyper_iteration", "nan", "3,4"))
    assert stopped.returncode == 2
    (line,) = stopped.stderr.strip().splitlines()[-1:]
    assert line.startswith("bilevel: error: 2 hyper-iterations in a row gave a non-finite outer loss") and (
        "last.pt" in line) and "Traceback" not in stopped.stderr
    assert (tmp_path / "nan_stop" / "last.pt").is_file()  # the good checkpoint of step 2


def test_out_of_memory_names_the_options_that_fix_it(train, tmp_path):
    done = train(tmp_path / "oom", fault=("hyper_iteration", "oom", "1"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("bilevel: error: out of memory on cpu at step 1") and "task.meta_batch" in line and (
        "hypergrad=checkpointed" in line) and "trainer.precision=bf16" in line


def test_a_finished_run_trains_longer_only_when_asked_and_keeps_its_shorter_result(train, uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    assert train(run_dir, "trainer.steps=4").returncode == 0
    shorter = _summary(run_dir)
    for overrides in [("trainer.steps=6",), ("resume=true", "trainer.steps=4")]:  # not asked; not longer
        refused = train(run_dir, *overrides)
        assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
            f"bilevel: error: {run_dir} holds a finished run of 4 steps (summary.json); train it longer with "
            "resume=true trainer.steps=<more than 4>, choose another directory (hydra.run.dir=...), or test it "
            f"with bilevel eval checkpoint={run_dir / 'best.pt'}"]
    assert train(run_dir, "resume=true", "trainer.steps=6").returncode == 0
    assert _summary(run_dir) == _summary(uninterrupted)  # 4 is a multiple of val_every: bit for bit
    assert _metrics(run_dir) == _metrics(uninterrupted)
    assert _summary_file(run_dir / "summary_4_steps.json") == shorter
    (run_dir / "summary.json").write_text('{"test_acc": ')  # cut short
    broken = train(run_dir, "resume=true", "trainer.steps=8")
    assert broken.returncode == 2 and broken.stderr.strip().splitlines() == [
        f"bilevel: error: {run_dir / 'summary.json'} is not a summary bilevel train wrote (no steps in it); move it "
        "aside to continue the run's last.pt, or choose another directory with hydra.run.dir=..."]
