"""Sweeps through the launcher plugins: joblib and submitit's local executor for real, SLURM by composition."""

import json

import pytest
from hydra import compose, initialize_config_dir

from bilevel_cli.cli import CONFIG_DIR
from test_cli import TINY

pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[launchers]'")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[launchers]'")


def _summaries(root):
    return [json.loads(p.read_text()) for p in sorted(root.glob("outputs/multirun/*/*/summary.json"))]


def test_slurm_preset_composes_with_requeue_enabled():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.max_num_timeout > 0 and launcher.gpus_per_node == 1


@pytest.mark.slow
def test_parallel_preset_runs_a_sweep_with_joblib(bilevel, tmp_path):
    done = bilevel("train", "-m", "hydra/launcher=parallel", "seed=0,1", *TINY)
    assert "Joblib" in done.stderr + done.stdout
    assert [s["seed"] for s in _summaries(tmp_path)] == [0, 1]


@pytest.mark.slow
def test_submitit_local_executor_runs_a_sweep(bilevel, tmp_path):
    bilevel("train", "-m", "hydra/launcher=submitit_local", "hypergrad.T=1,2", *TINY)
    assert sorted(s["T"] for s in _summaries(tmp_path)) == [1, 2]
    assert list(tmp_path.glob("outputs/multirun/*/.submitit/*"))  # the executor's own job folders
