"""What continuing a run needs beyond the weights: which checkpoint to continue, whether it fits the
config, and every random number generator's state, so that a resumed run is bit-for-bit the uninterrupted one."""

import json
import random
from pathlib import Path

import numpy as np
import torch

from bilevel_cli.engine import checkpoint
from bilevel_cli.engine.loggers import flatten
from bilevel_cli.errors import UserError

# Config keys a resumed run may change: how long, where and how verbosely it runs, not what it computes (device and
# precision change its rounding: a resumed run is then no longer bit for bit the uninterrupted one).
MAY_CHANGE = {"resume", "device", "logger", "trainer.steps", "trainer.patience", "trainer.log_every",
              "trainer.max_bad_steps", "trainer.precision"}


def checkpoint_to_resume(resume: bool | None, run_dir: Path, steps: int) -> Path | None:
    """The checkpoint to continue from, or None to start fresh. `resume=null` (the default) continues when the
    run directory holds one (a rerun in the same directory, a requeued job); `true` insists; `false` refuses
    to start over on top of a run's checkpoints, which would lose them. A finished run continues only when asked
    to, with `resume=true` and more `steps` than it ran (see `set_aside_summary`)."""
    last, summary = run_dir / "last.pt", run_dir / "summary.json"
    if summary.is_file() and last.is_file():
        finished = _steps_of(summary)
        if resume is not True or steps <= finished:
            raise UserError(f"{run_dir} holds a finished run of {finished} steps (summary.json); train it longer "
                            f"with resume=true trainer.steps=<more than {finished}>, choose another directory "
                            f"(hydra.run.dir=...), or test it with bilevel eval checkpoint={run_dir / 'best.pt'}")
    if resume is False and last.is_file():
        raise UserError(f"{run_dir} already holds a run's checkpoint; pass resume=true to continue it, "
                        "or choose another directory with hydra.run.dir=...")
    if resume is True and not last.is_file():
        raise UserError(f"resume=true but {last} does not exist; point hydra.run.dir at the run directory "
                        "to continue (e.g. hydra.run.dir=outputs/train/2026-12-01_10-00-00)")
    return last if last.is_file() and resume is not False else None


def finished_sweep_job(run_dir: Path, config: dict) -> dict | None:
    """A sweep rerun in its directory, to continue it after a stop, keeps the jobs that had finished: the summary of
    the run `run_dir` holds when it finished with this config (see `check_resumable`), else None."""
    last, summary = run_dir / "last.pt", run_dir / "summary.json"
    if not (summary.is_file() and last.is_file()):
        return None
    check_resumable(checkpoint.load(last)["config"], config, last)
    return json.loads(summary.read_text())


def check_resumable(saved: dict, config: dict, path: Path) -> None:
    """A checkpoint continues only the computation it started: every key outside MAY_CHANGE must agree."""
    was, now = flatten(saved), flatten(config)
    differing = [key for key in sorted(was.keys() | now.keys()) if not _may_change(key) and was.get(key) != now.get(key)]
    if differing:
        key = differing[0]
        raise UserError(f"cannot resume {path}: the config differs from the checkpoint's in {', '.join(differing)} "
                        f"({key}: {was.get(key)!r} there, {now.get(key)!r} now); "
                        "drop those overrides or start a new run in another directory")


def set_aside_summary(run_dir: Path) -> None:
    """A finished run trained longer keeps the shorter run's result on record, as summary_<steps>_steps.json."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        summary.rename(run_dir / f"summary_{_steps_of(summary)}_steps.json")


def rng_state(generators: list[torch.Generator]) -> dict:
    """Every generator a hyper-iteration may draw from: the global ones and the task's own."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _numpy_state(), "python": random.getstate(),
            "task": [g.get_state() for g in generators]}


def set_rng_state(state: dict, generators: list[torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(state["python"])
    for generator, saved in zip(generators, state["task"], strict=True):
        generator.set_state(saved)


def _numpy_state() -> tuple:
    """NumPy's generator state with its key array as a tensor: checkpoints load with weights_only=True."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    return name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss


def _steps_of(summary: Path) -> int:
    try:
        return int(json.loads(summary.read_text())["steps"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{summary} is not a summary bilevel train wrote (no steps in it); move it aside to continue "
                        "the run's last.pt, or choose another directory with hydra.run.dir=...") from None


def _may_change(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in MAY_CHANGE)
