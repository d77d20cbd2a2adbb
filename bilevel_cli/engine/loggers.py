"""Where metrics go: always metrics.jsonl in the run directory; wandb when `logger=wandb`."""

import json
from pathlib import Path


class JsonlLogger:
    """One JSON object per logged step, appended to <run dir>/metrics.jsonl."""

    def __init__(self, run_dir: Path):
        self.file = open(run_dir / "metrics.jsonl", "a", buffering=1)

    def log(self, metrics: dict) -> None:
        self.file.write(json.dumps(metrics) + "\n")

    def finish(self, summary: dict) -> None:
        self.file.close()


class WandbLogger:
    """Offline by default (no account needed: `wandb sync` uploads later); `logger.mode=online` to stream."""

    def __init__(self, run_dir: Path, config: dict, project: str, mode: str, group: str | None,
                 name: str | None, tags: list[str]):
        import wandb

        self.run = wandb.init(project=project, mode=mode, group=group, name=name, tags=list(tags),
                              dir=str(run_dir), config=config, reinit="finish_previous")

    def log(self, metrics: dict) -> None:
        self.run.log({k: v for k, v in metrics.items() if k != "step"}, step=metrics["step"])

    def finish(self, summary: dict) -> None:
        self.run.summary.update(summary)
        self.run.finish()


def open_loggers(cfg, run_dir: Path, config: dict, sweep: str | None) -> list:
    """metrics.jsonl always; wandb as `cfg` (the config's `logger` group) asks."""
    loggers = [JsonlLogger(run_dir)]
    if cfg.name == "wandb":
        loggers.append(WandbLogger(run_dir, config, cfg.project, cfg.mode, cfg.group or sweep,
                                   cfg.name_run or run_dir.name, cfg.tags))
    return loggers
