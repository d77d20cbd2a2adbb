"""`bilevel eval`: a trained checkpoint tested again, under its training config with value overrides."""

import json
import logging
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from bilevel_cli.engine import checkpoint
from bilevel_cli.engine.allocator import keep_freed_memory
from bilevel_cli.engine.build import build_data, build_task
from bilevel_cli.engine.config import check_config, resolve_device
from bilevel_cli.engine.files import write_text_atomically
from bilevel_cli.engine.train import describe
from bilevel_cli.errors import UserError

log = logging.getLogger(__name__)


def evaluate_checkpoint(path: str | None, overrides: list[str], run_dir: Path) -> dict:
    """Test a trained checkpoint under its training config, with value overrides (e.g. `hypergrad.T=10`,
    `task.ways=20`, `trainer.test_episodes=1000`) applied on top; writes config.yaml and summary.json."""
    if path is None:
        raise UserError("no checkpoint to test; pass one: bilevel eval checkpoint=outputs/train/<run>/best.pt")
    keep_freed_memory()
    task, cfg, state = load_checkpointed_task(path, overrides)
    test = task.test()
    summary = {**test, "task": cfg.task.name, "T": cfg.hypergrad.T, "checkpoint": str(Path(path).resolve()),
               "checkpoint_step": state.get("step")}
    log.info(describe(test))
    again = "make room, then run this bilevel eval again"
    write_text_atomically(run_dir / "config.yaml", OmegaConf.to_yaml(cfg), again)
    write_text_atomically(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n", again)
    return summary


def load_checkpointed_task(path: str, overrides: list[str] = ()):
    """The task a checkpoint trained, rebuilt under its training config with value overrides applied, its outer
    variables loaded; returns (task, config, checkpoint state)."""
    state = checkpoint.load(path)
    cfg = OmegaConf.create(state["config"])
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if isinstance(OmegaConf.select(cfg, key), DictConfig):
            raise UserError(f"eval cannot switch the config group {key!r}; the checkpoint fixes it "
                            "(override single values such as hypergrad.T=10 or task.ways=20)")
        OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
    check_config(cfg)
    checkpoint.check_compatible(state, cfg, path)
    task = build_task(cfg, build_data(cfg, resolve_device(cfg.device)))
    checkpoint.load_task_state(task, state, path)
    return task, cfg, state
