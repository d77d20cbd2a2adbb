"""One run on two processes (torchrun, gloo on the CPU) against one process with the same total meta-batch."""

import json

import pytest

from test_cli import TINY

pytestmark = pytest.mark.slow


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_ranks_train_as_one_process_with_the_whole_meta_batch(run_python, tmp_path):
    settings = [*TINY, "task.meta_batch=4", "trainer.log_every=1", "inner.learn_lr=true"]
    two = run_python("-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "bilevel_cli", "train", *settings)
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_python("-m", "bilevel_cli", "train", *settings, "hydra.run.dir=one_process")
    assert one.returncode == 0, one.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "train").iterdir()  # both ranks wrote into one run directory
    assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert (run_dir / "train.log").read_text().count("test accuracy") == 1  # rank 0 logs, alone
    # The same outer loss and hypergradient at every step: the ranks' halves of each meta-batch, averaged, are
    # the whole meta-batch (up to the order of float32 sums).
    for split, whole in zip(_metrics(run_dir), _metrics(tmp_path / "one_process"), strict=True):
        assert split["step"] == whole["step"]
        for key in ("outer_loss", "hypergrad_norm", "inner_lr", "train_acc"):
            assert split[key] == pytest.approx(whole[key], rel=1e-5), (split["step"], key)
    summaries = [json.loads((d / "summary.json").read_text()) for d in (run_dir, tmp_path / "one_process")]
    for key in ("test_acc", "test_ci95", "best_val_acc", "best_step"):
        assert summaries[0][key] == pytest.approx(summaries[1][key], rel=1e-6), key


def test_a_meta_batch_that_does_not_split_is_one_line(run_python):
    done = run_python("-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "bilevel_cli", "train", *TINY,
                  "task.meta_batch=3")
    # torchrun then reports the failed ranks in its own words (and traceback); each rank said one line, exit code 2.
    assert done.returncode != 0 and "exitcode  : 2" in done.stderr
    assert ("bilevel: error: task.meta_batch=3 does not split into 2 equal parts, one per process; use a multiple "
            "of 2") in done.stderr.splitlines()
