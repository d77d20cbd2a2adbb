"""`bilevel train experiment=realtime_ho` as a user runs it: one training run that logs its hyperparameters as they
are tuned, and a summary with the test accuracy and the hyperparameters of the kept weights."""

import json

import pytest

pytestmark = pytest.mark.slow

# Seconds on a CPU: 4 hyper-iterations of Δ = 3 inner steps on a small MLP.
TINY = ["experiment=realtime_ho", "task.hidden=[16]", "hypergrad.T=3", "trainer.steps=4", "trainer.log_every=2",
        "trainer.val_every=2", "device=cpu"]


def test_realtime_ho_run_logs_and_summarizes_the_hyperparameters(bilevel, tmp_path):
    bilevel("train", *TINY)
    (run,) = sorted(p for p in tmp_path.glob("outputs/train/*") if p.is_dir())
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [2, 4]
    for m in lines:
        assert {"lr", "momentum", "l2", "train_acc", "outer_loss", "hypergrad_norm", "val_acc", "val_loss"} <= m.keys()
    assert all(lines[0][k] != lines[1][k] for k in ("lr", "momentum", "l2")), "the outer steps move all three"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "realtime_ho" and summary["method"] == "forward" and summary["T"] == 3
    assert 0 <= summary["test_acc"] <= 100 and {"lr", "momentum", "l2"} <= summary.keys()
    assert summary["inner_steps"] == 3 * summary["best_step"]  # the kept weights and hyperparameters are the best's


def test_realtime_ho_refuses_a_reverse_mode_hypergradient(bilevel):
    done = bilevel("train", *TINY, "hypergrad=reverse", check=False)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "bilevel: error: task=realtime_ho carries the tangents dw/dλ across hyper-iterations, which only forward mode "
        "does; use hypergrad=forward (got hypergrad.method=reverse)"]
