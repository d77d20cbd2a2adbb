"""The `bilevel` command as a user runs it: run directories, sweeps, eval, and one-line errors."""

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version

import hydra
import pytest
import torch

from bilevel_cli.engine.config import native_bf16

pytestmark = pytest.mark.slow

# A run small enough for a test: seconds on a CPU.
TINY = ["backbone.channels=8", "task.meta_batch=2", "trainer.steps=4", "trainer.log_every=2", "trainer.val_every=2",
        "trainer.val_episodes=4", "trainer.test_episodes=6", "trainer.eval_batch=4", "device=cpu"]


def _run_dirs(root, pattern="outputs/train/*"):
    return sorted(p for p in root.glob(pattern) if p.is_dir())


def test_help_lists_the_commands(bilevel):
    out = bilevel("--help").stdout
    assert "train" in out and "eval" in out


def test_version_names_the_package_and_the_libraries(bilevel):
    out = bilevel("--version").stdout
    assert out.startswith(f"bilevel {version('bilevel-cli')} (torch {torch.__version__}, hydra-core {hydra.__version__}, ")


def test_the_command_starts_without_importing_torchvision():
    # torchvision takes seconds to import; only the resnet18 backbone and the downloads need it.
    probe = """
import sys
from bilevel_cli.cli import main
sys.argv = ["bilevel", "train", "--cfg", "job"]
try:
    main()
finally:
    print("torchvision imported:", "torchvision" in sys.modules, file=sys.stderr)
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stderr.strip().splitlines()[-1] == "torchvision imported: False"


def test_ctrl_c_before_training_listens_for_it_is_one_line_and_exit_130(glyph_root, tmp_path):
    # Ctrl-C while the data set loads, before the training loop's handler: Python's KeyboardInterrupt.
    probe = """
import os, signal, sys
from bilevel_cli.cli import main
from bilevel_cli.engine import build

def interrupted(*args):
    os.kill(os.getpid(), signal.SIGINT)

build.build_data = interrupted
main(["train", "device=cpu"])
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env={**os.environ, "BILEVEL_DATA_DIR": str(glyph_root)}, cwd=tmp_path)
    assert done.returncode == 130
    assert done.stderr.splitlines() == ["bilevel: interrupted; a run's directory keeps the checkpoint of its last "
                                        "validation, which a rerun there with the same overrides continues"]


@pytest.mark.skipif(shutil.which("bilevel") is None or shutil.which("bash") is None,
                    reason="needs the installed bilevel command and bash")
def test_tab_completion_completes_the_commands_and_each_commands_overrides(tmp_path):
    script = subprocess.run(["bilevel", "-sc", "install=bash"], capture_output=True, text=True, check=True).stdout
    for line, choices in [("bilevel ", "train eval compare"), ("bilevel tr", "train"),
                          ("bilevel train trainer.st", "trainer.steps="), ("bilevel eval che", "checkpoint="),
                          ("bilevel train hypergrad=ch", "hypergrad=checkpointed"), ("bilevel compare ", "")]:
        # What bash does on <TAB>: the line in COMP_LINE and COMP_WORDS, then the installed function.
        complete = (f"{script}\nCOMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}; COMP_WORDS=({line} ''); "
                    "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); [[ $COMP_LINE == *' ' ]] || COMP_CWORD=$(( COMP_CWORD - 1 ));"
                    ' hydra_bash_completion; echo "${COMPREPLY[@]}"')
        done = subprocess.run(["bash", "-c", complete], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.stdout.split() == choices.split(), (line, done.stdout, done.stderr[-2000:])


def test_unknown_command_is_one_line_and_exit_2(bilevel):
    done = bilevel("fit", check=False)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "bilevel: error: unknown command 'fit'; choose one of: train, eval, compare (see bilevel --help)"]


def test_cfg_job_prints_the_composed_config(bilevel):
    out = bilevel("train", "--cfg", "job", "hypergrad.T=7").stdout
    assert "T: 7" in out and "_target_: bilevel_cli.models.Conv4" in out


def test_train_writes_the_run_directory(bilevel, tmp_path):
    bilevel("train", *TINY, "inner.learn_lr=true")
    (run,) = _run_dirs(tmp_path)
    assert {"config.yaml", "metrics.jsonl", "summary.json", "best.pt", "last.pt", "train.log"} <= {
        p.name for p in run.iterdir()}
    assert "${" not in (run / "config.yaml").read_text()  # resolved
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [2, 4]
    assert {"outer_loss", "train_acc", "hypergrad_norm", "episodes_per_s", "wall_time", "val_acc",
            "inner_lr"} <= lines[-1].keys()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["T"] == 5 and summary["method"] == "reverse" and summary["test_episodes"] == 6
    assert 0 <= summary["test_acc"] <= 100 and summary["test_ci95"] >= 0
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["step"] == summary["best_step"] and best["config"]["hypergrad"]["T"] == 5
    assert "test accuracy" in (run / "train.log").read_text()


def test_sweep_over_T_gives_one_run_directory_each(bilevel, tmp_path, glyph_root):
    # A path among the overrides stays out of the directory names, where its slashes would nest the runs.
    bilevel("train", "-m", "hypergrad.T=1,2,3", f"data.root={glyph_root}", *TINY)
    runs = _run_dirs(tmp_path, "outputs/multirun/*/*")
    assert len(runs) == 3 and all(f"hypergrad.T={T}" in r.name and "data.root" not in r.name
                                  for T, r in zip([1, 2, 3], runs))
    assert [json.loads((r / "summary.json").read_text())["T"] for r in runs] == [1, 2, 3]


def test_a_users_own_experiment_file_runs_from_their_config_folder(bilevel, tmp_path):
    (tmp_path / "mine" / "experiment").mkdir(parents=True)
    (tmp_path / "mine" / "experiment" / "short.yaml").write_text(
        "# @package _global_\nhypergrad:\n  T: 2\ntask:\n  ways: 3\n")
    bilevel("train", "-cd", "mine", "experiment=short", *TINY)
    (run,) = _run_dirs(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["T"] == 2 and "ways: 3" in (run / "config.yaml").read_text()


def test_eval_tests_a_checkpoint_with_value_overrides(bilevel, tmp_path):
    bilevel("train", *TINY)
    (run,) = _run_dirs(tmp_path)
    bilevel("eval", f"checkpoint={run / 'best.pt'}", "hypergrad.T=2", "trainer.test_episodes=8")
    (evaluation,) = _run_dirs(tmp_path, "outputs/eval/*")
    summary = json.loads((evaluation / "summary.json").read_text())
    assert summary["T"] == 2 and summary["test_episodes"] == 8


def test_patience_stops_a_run_that_no_longer_improves(bilevel, tmp_path):
    """With a negligible outer rate validation cannot improve: the run stops after `patience` validations."""
    bilevel("train", *TINY, "trainer.steps=20", "trainer.patience=1", "outer.optimizer.lr=1e-30")
    (run,) = _run_dirs(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_step"] == 2 and summary["last_step"] == 4


def test_bf16_warns_where_the_device_would_only_emulate_it(bilevel):
    """bf16 on a CPU without AVX512-BF16 or AMX runs, but 12 times slower than fp32: the run says so at its start,
    and stays quiet where bf16 is native."""
    done = bilevel("train", *TINY, "trainer.precision=bf16")
    warned = "trainer.precision=bf16 on cpu, which has no native bfloat16" in done.stdout  # the log goes there
    assert warned == (not native_bf16(torch.device("cpu")))


def test_joint_training_baseline_runs_and_reselects_T(bilevel, tmp_path):
    bilevel("train", *TINY, "task=joint_training", "trainer.select_T=[1,3]")
    (run,) = _run_dirs(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "joint_training" and summary["method"] is None and summary["test_T"] in (1, 3)


def test_wandb_logs_offline_without_an_account(bilevel, tmp_path):
    bilevel("train", "logger=wandb", *TINY)
    (run,) = _run_dirs(tmp_path)
    assert list((run / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize("args, message", [
    (["hypergrad.T=0"], "bilevel: error: hypergrad.T must be an integer >= 1, got 0"),
    (["hypergrad.T=abc"], "bilevel: error: hypergrad.T must be an integer >= 1, got 'abc'"),
    (["inner.lr=-1"], "bilevel: error: inner.lr must be a positive number, got -1"),
    (["hypergrad.method=exact"], "bilevel: error: unknown hypergrad.method 'exact'; choose one of: reverse,"),
    (["inner.name=sgd"], "bilevel: error: unknown inner.name 'sgd'; choose one of: gd, momentum, adam"),
    (["task.ways=10000"], "bilevel: error: 10000-way episodes need 10000 classes but the split has"),
    (["task.queries=30"], "bilevel: error: 1 shots + 30 queries need 31 images per class but the split has 20"),
    (["device=cuda:0"], "bilevel: error: device=cuda:0 but no CUDA GPU is visible"),
    (["backbone._target_=os.system"], "bilevel: error: backbone._target_ 'os.system' is not allowed"),
    (["data=digits"], "bilevel: error: task=hyper_representation needs a few-shot data set (data=glyphs, omniglot or"),
])
def test_bad_input_is_one_line_and_exit_2(bilevel, tmp_path, args, message):
    if args[0].startswith("device=cuda") and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    done = bilevel("train", *TINY, *args, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(message)
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_missing_data_set_says_where_it_was_looked_for_and_how_to_get_it(bilevel, tmp_path):
    done = bilevel("train", *TINY, "data=omniglot", f"data.root={tmp_path / 'nowhere'}", check=False)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith(f"bilevel: error: Omniglot not found: looked for {tmp_path / 'nowhere'}")
    assert "data.download=true" in done.stderr


def test_eval_of_a_missing_checkpoint_says_where_it_looked(bilevel, tmp_path):
    done = bilevel("eval", "checkpoint=nowhere/best.pt", check=False)
    assert done.returncode == 2 and done.stderr.startswith("bilevel: error: checkpoint not found: nowhere/best.pt")


def test_eval_refuses_a_corrupt_checkpoint(bilevel, tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    done = bilevel("eval", "checkpoint=bad.pt", check=False)
    assert done.returncode == 2 and done.stderr.startswith("bilevel: error: cannot read checkpoint bad.pt")


def test_episodes_per_second_counts_the_steps_of_its_own_window(bilevel, tmp_path):
    """Each log line's rate covers the steps since the previous line, not since the last validation."""
    bilevel("train", *TINY, "trainer.steps=8", "trainer.val_every=8", "trainer.log_every=2")
    (run,) = _run_dirs(tmp_path)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # Without validation in between, 2 steps of 2 episodes took (wall_time difference) seconds.
    for previous, line in zip(lines[:-2], lines[1:-1]):
        elapsed = line["wall_time"] - previous["wall_time"]
        assert line["episodes_per_s"] == pytest.approx(4 / elapsed, rel=0.2)


def test_hyper_cleaning_sizes_the_data_set_cannot_supply_are_one_line(bilevel):
    done = bilevel("train", "experiment=hyper_cleaning", "task.test=5000", check=False)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "bilevel: error: hyper-cleaning needs train + val + test = 6000 examples but the data set has 1797; "
        "lower task.train, task.val or task.test"]


def test_hyper_cleaning_reports_baseline_oracle_and_detection(bilevel, tmp_path):
    """The same engine runs an HO task: summary.json holds the cleaned model's test accuracy beside the
    baseline's and the oracle's, and the detection scores; the log shows the weights of both groups."""
    bilevel("train", "experiment=hyper_cleaning", "trainer.steps=4", "trainer.log_every=2", "trainer.val_every=2",
            "hypergrad.T=5", "device=cpu")
    (run,) = _run_dirs(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "hyper_cleaning" and summary["corrupted"] == 300 and summary["T"] == 5
    assert {"test_acc", "test_acc_baseline", "test_acc_oracle", "precision", "recall", "f1"} <= summary.keys()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"weight_clean", "weight_corrupted", "f1", "val_acc", "s_per_iteration"} <= lines[-1].keys()
    assert "episodes_per_s" not in lines[-1]
    # eval rebuilds the task from the checkpoint's config; a key of a task other than the default needs "+".
    bilevel("eval", f"checkpoint={run / 'best.pt'}", "+task.threshold=1.01")
    (evaluation,) = _run_dirs(tmp_path, "outputs/eval/*")
    tested = json.loads((evaluation / "summary.json").read_text())
    assert tested["test_acc"] == summary["test_acc"] and tested["flagged"] == 600  # every weight is below 1.01
