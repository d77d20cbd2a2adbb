"""Where metrics go: always metrics.jsonl in the run directory; TensorBoard and wandb as `logger=` selects them,
several at once (`logger=[wandb,tensorboard]`). A resumed run continues each where its checkpoint was taken."""

import contextlib
import json
from pathlib import Path

import yaml

from bilevel_cli.engine.files import write_text_atomically
from bilevel_cli.engine.rerun import continue_command
from bilevel_cli.errors import UserError

# What a run is, in the HParams view of TensorBoard, beside the keys its command line overrides.
MAIN_HPARAMS = ("task.name", "task.ways", "task.shots", "hypergrad.method", "hypergrad.T", "inner.name", "seed")


class JsonlLogger:
    """One JSON object per logged step, appended to <run dir>/metrics.jsonl."""

    def __init__(self, run_dir: Path, resume_step: int | None):
        path = run_dir / "metrics.jsonl"
        if path.exists():
            _keep_steps_up_to(path, resume_step or 0)
        self.path = path
        self.file = open(path, "a", buffering=1)  # line-buffered: a write that fails (full disk) fails in log

    def log(self, metrics: dict) -> None:
        try:
            self.file.write(json.dumps(metrics) + "\n")
        except OSError as error:  # a line cut short here is dropped when the run continues (_keep_steps_up_to)
            with contextlib.suppress(OSError):  # closing flushes the unwritten line again
                self.file.close()
            raise UserError(f"cannot append step {metrics['step']} to {self.path} ({error.strerror or error}); the "
                            "run's checkpoints are intact: make room, then continue from its last.pt: "
                            f"{continue_command(self.path.parent)}") from None

    def finish(self, summary: dict) -> None:
        self.file.close()


def _keep_steps_up_to(path: Path, last_step: int) -> None:
    """Drop the lines logged after the checkpoint a run continues from (a fresh start keeps none), so that its
    lines continue the file instead of repeating steps. A line cut short by a kill does not parse and goes too.
    Written atomically: a second kill now cannot leave the file half rewritten."""
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    write_text_atomically(path, "".join(kept), "nothing of the run was changed: make room, then run it again")


class TensorBoardLogger:
    """Scalars per step into the run directory itself, so `tensorboard --logdir outputs` shows one run per
    directory; at the end the run's hyperparameters with its final metrics, for the HParams tab."""

    def __init__(self, run_dir: Path, flush_secs: int, hparams: dict, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides what an earlier attempt in this directory logged after the step continued from.
        self.writer = SummaryWriter(log_dir=str(run_dir), flush_secs=flush_secs, purge_step=(resume_step or 0) + 1)
        self.hparams = hparams

    def log(self, metrics: dict) -> None:
        for name, value in _numbers(metrics).items():
            if name != "step":
                self.writer.add_scalar(name, value, metrics["step"])

    def finish(self, summary: dict) -> None:
        from torch.utils.tensorboard.summary import hparams

        # Floats only: the summary's measurements (accuracies, times); its integers are settings and counts.
        # Own tag names: the HParams tab reads a metric from the scalar of that tag, and "test_acc" alone
        # could be a per-step scalar of some task.
        final = {f"summary/{name}": value for name, value in summary.items() if isinstance(value, float)}
        step = summary.get("last_step")
        # Into this writer's file rather than through add_hparams, which would open a second run in a subdirectory.
        for event in hparams(self.hparams, final):
            self.writer.file_writer.add_summary(event, step)
        for name, value in final.items():
            self.writer.add_scalar(name, value, step)
        self.writer.close()


def _numbers(values: dict) -> dict:
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class WandbLogger:
    """Offline by default (no account needed: `wandb sync` uploads later); `logger.wandb.mode=online` to stream.
    The run id is kept in the run directory, so a resumed run continues the same wandb run."""

    def __init__(self, run_dir: Path, config: dict, settings, group: str | None, resume_step: int | None):
        import wandb

        id_file = run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if resume_step is not None and id_file.is_file() else None
        self.run = wandb.init(project=settings.project, mode=settings.mode, group=settings.group or group,
                              name=settings.name or run_dir.name, tags=list(settings.tags), dir=str(run_dir),
                              config=config, id=run_id, resume="allow" if run_id else None,
                              reinit="finish_previous")
        id_file.write_text(self.run.id + "\n")

    def log(self, metrics: dict) -> None:
        self.run.log({k: v for k, v in metrics.items() if k != "step"}, step=metrics["step"])

    def finish(self, summary: dict) -> None:
        self.run.summary.update(summary)
        self.run.finish()


def open_loggers(cfg, run_dir: Path, config: dict, sweep: str | None, resume_step: int | None = None) -> list:
    """metrics.jsonl always; TensorBoard and wandb as `cfg` (the config's `logger` group) selects them. `sweep`
    (the multirun's directory name) groups wandb runs; `resume_step`: the step a resumed run continues from."""
    overrides = run_overrides(run_dir)
    loggers = [JsonlLogger(run_dir, resume_step)]
    if "tensorboard" in cfg:
        loggers.append(TensorBoardLogger(run_dir, cfg.tensorboard.flush_secs, run_hparams(config, overrides),
                                         resume_step))
    if "wandb" in cfg:
        loggers.append(WandbLogger(run_dir, {**config, "overrides": overrides}, cfg.wandb, sweep, resume_step))
    return loggers


def run_overrides(run_dir: Path) -> dict[str, str]:
    """The run's command-line overrides as Hydra recorded them (`.hydra/overrides.yaml`), key → value as typed;
    a sweep's jobs differ exactly in these. Empty for a run not started by Hydra."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    overrides = {}
    for text in yaml.safe_load(path.read_text()) or []:
        key, _, value = text.partition("=")
        overrides[key.lstrip("+~")] = value
    return overrides


def run_hparams(config: dict, overrides: dict[str, str]) -> dict:
    """The values that tell a run apart: the main ones and every overridden key, each as the resolved config
    holds it, or as typed when it names a config group option (`data=omniglot`)."""
    flat = flatten(config)
    values = {key: flat[key] for key in MAIN_HPARAMS if key in flat}
    values.update({key: flat.get(key, value) for key, value in overrides.items()})
    # TensorBoard takes numbers, strings and booleans only.
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in values.items()}


def flatten(config: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}, "c": {}} → {"a.b": 1}: nested dicts to dotted keys, as overrides name them; a group
    option that sets nothing (`logger=none`) leaves no key, so its override names it."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
