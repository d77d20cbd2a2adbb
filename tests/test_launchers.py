"""Sweeps through the launcher plugins: joblib and submitit's local executor for real, SLURM by composition; a sweep
stopped by a signal, or with a failing job, loses no job's work."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

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


# Jobs that would run for hours (no validation before the end): only a stop's checkpoint can save their steps.
ENDLESS = ["backbone.channels=8", "task.meta_batch=2", "trainer.steps=1000000", "trainer.log_every=1",
           "trainer.val_every=1000000", "trainer.val_episodes=4", "trainer.test_episodes=6", "trainer.eval_batch=4",
           "device=cpu"]
STOPPED = re.compile(r"bilevel: stopped by (\w+) at step (\d+); checkpoint saved; continue with: (.*)")


@pytest.fixture
def endless_sweep(python_env, tmp_path):
    """Starts a parallel sweep of ENDLESS jobs (in its own session, as a terminal's foreground job is) and returns
    it once each of the `running` jobs has logged a step; kills what is left of it after the test."""
    (tmp_path / "mine" / "experiment").mkdir(parents=True)
    (tmp_path / "mine" / "experiment" / "endless.yaml").write_text(
        "# @package _global_\n" + OmegaConf.to_yaml(OmegaConf.from_dotlist(ENDLESS)))
    started = []

    def start(*overrides, running):
        with open(tmp_path / "stderr.txt", "w") as stderr:  # a pipe unread while the sweep runs could fill up
            sweep = subprocess.Popen(
                [sys.executable, "-m", "bilevel_cli", "train", "-m", "-cd", "mine", "experiment=endless",
                 "hydra/launcher=parallel", "hydra.sweep.dir=sweep", *overrides],
                cwd=tmp_path, env=python_env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        started.append(sweep)
        deadline = time.monotonic() + 180
        while not all(any(p.stat().st_size for p in (tmp_path / "sweep").glob(f"{job}_*/metrics.jsonl"))
                      for job in running):
            assert sweep.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, "the sweep's jobs logged no step in 3 minutes"
            time.sleep(0.2)
        return sweep

    yield start
    for sweep in started:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)


def _said(tmp_path):
    """The lines `bilevel` said on stderr."""
    return [line for line in (tmp_path / "stderr.txt").read_text().splitlines() if line.startswith("bilevel: ")]


def _stopped_jobs(lines):
    """{job number: (signal name, step, the command that continues it)} from the jobs' lines."""
    stopped = {}
    for line in lines:
        if match := STOPPED.fullmatch(line):
            job = re.search(r"/sweep/(\d+)_", match[3])[1]
            stopped[int(job)] = match[1], int(match[2]), match[3]
    return stopped


@pytest.mark.slow
def test_sigterm_to_a_parallel_sweep_saves_its_running_jobs_then_the_printed_command_continues_it(
        endless_sweep, run_python, tmp_path):
    sweep = endless_sweep("seed=0,1,2", "hydra.launcher.n_jobs=2", running=[0, 1])
    sweep.send_signal(signal.SIGTERM)  # to the launching process alone, as `kill` or `docker stop` sends it
    assert sweep.wait(timeout=120) == 128 + signal.SIGTERM
    said = _said(tmp_path)
    assert said[0].startswith("bilevel: SIGTERM: stopping the sweep; each running job finishes its hyper-iteration")
    stopped = _stopped_jobs(said)
    assert sorted(stopped) == [0, 1] and {name for name, _, _ in stopped.values()} == {"SIGTERM"}
    assert "bilevel: 2_experiment=endless,seed=2 not started: the sweep stopped on SIGTERM" in said
    assert not list((tmp_path / "sweep").glob("2_*/metrics.jsonl"))
    head, command = said[-1].split(" with: ")
    assert head == ("bilevel: the sweep stopped on SIGTERM; continue it (the finished jobs kept, the stopped ones "
                    "from their checkpoints, the others started)")
    assert command == (f"bilevel train -m -cd {tmp_path / 'mine'} experiment=endless seed=0,1,2 "
                       f"hydra/launcher=parallel hydra.launcher.n_jobs=2 hydra.sweep.dir={tmp_path / 'sweep'}")

    # The printed command, to two steps past the later stop: no step lost or repeated, the third job run in full.
    end = max(step for _, step, _ in stopped.values()) + 2
    rerun = [*shlex.split(command)[1:], f"trainer.steps={end}"]
    done = run_python("-m", "bilevel_cli", *rerun)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted((tmp_path / "sweep").glob("*_*"))
    summaries = [(job / "summary.json").read_text() for job in jobs]
    assert [json.loads(summary)["last_step"] for summary in summaries] == [end] * 3
    for job in jobs:
        logged = [json.loads(line)["step"] for line in (job / "metrics.jsonl").read_text().splitlines()]
        assert logged == list(range(1, end + 1))

    again = run_python("-m", "bilevel_cli", *rerun)  # a finished job is kept as it is, not run again
    assert again.returncode == 0 and "holds this job's finished run: kept" in again.stdout + again.stderr
    assert [(job / "summary.json").read_text() for job in jobs] == summaries
    (tmp_path / "mine" / "experiment" / "endless.yaml").write_text(  # unless its config changed
        "# @package _global_\n" + OmegaConf.to_yaml(OmegaConf.from_dotlist([*ENDLESS, "outer.optimizer.lr=0.5"])))
    changed = run_python("-m", "bilevel_cli", *rerun)
    assert changed.returncode == 2
    assert "the config differs from the checkpoint's in outer.optimizer.lr" in changed.stderr


@pytest.mark.slow
def test_ctrl_c_at_the_terminal_stops_a_parallel_sweep_with_an_idle_worker_and_every_job_saved(endless_sweep,
                                                                                                tmp_path):
    # Three workers for two jobs: the idle one hears the Ctrl-C too, and its death would make joblib kill the others.
    sweep = endless_sweep("seed=0,1", "hydra.launcher.n_jobs=3", running=[0, 1])
    os.killpg(sweep.pid, signal.SIGINT)  # the whole foreground process group, as the terminal sends it
    assert sweep.wait(timeout=120) == 128 + signal.SIGINT
    said = _said(tmp_path)
    assert said[-1].startswith("bilevel: the sweep stopped on SIGINT")
    stopped = _stopped_jobs(said)
    assert sorted(stopped) == [0, 1] and {name for name, _, _ in stopped.values()} == {"SIGINT"}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "parallel"])
def test_a_failing_job_of_a_sweep_leaves_the_others_running_to_their_end(bilevel, tmp_path, launcher):
    done = bilevel("train", "-m", f"hydra/launcher={launcher}", *TINY, "trainer.patience=0,null", check=False)
    assert done.returncode == 2
    said = done.stderr.strip().splitlines()
    assert "bilevel: error: trainer.patience must be null or an integer >= 1, got 0" in said
    assert said[-1] == "bilevel: sweep job #0 failed (its error is above); the other jobs ran to their end"
    assert [s["seed"] for s in _summaries(tmp_path)] == [0]  # job #1's
