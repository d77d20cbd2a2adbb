"""Checks of a composed config before any work starts, each failing with one line that names the fix."""

import torch
from omegaconf import DictConfig, OmegaConf

from bilevel_cli.core import METHODS, OPTIMIZERS
from bilevel_cli.engine.build import BUILDERS
from bilevel_cli.errors import UserError
from bilevel_cli.models.batchnorm import NORMS

# key: the smallest value allowed
INTEGERS = {"seed": 0, "hypergrad.T": 1, "task.ways": 2, "task.shots": 1, "task.queries": 1, "task.meta_batch": 1,
            "trainer.steps": 1, "trainer.log_every": 1, "trainer.val_every": 1, "trainer.val_episodes": 1,
            "trainer.test_episodes": 1, "trainer.eval_batch": 1,
            "task.train": 1, "task.val": 1, "task.test": 1, "task.corrupted": 0}
# key: whether zero is allowed
NUMBERS = {"inner.lr": False, "outer.optimizer.lr": False, "outer.decay": True}
CHOICES = {"task.name": tuple(BUILDERS), "hypergrad.method": METHODS, "inner.name": OPTIMIZERS, "backbone.norm": NORMS}
# Hydra instantiates `_target_`s from the config: only classes and functions of this project and of torch.
TRUSTED_TARGETS = ("bilevel_cli.", "torch.")
ABSENT = object()


def check_config(cfg: DictConfig) -> None:
    for key, minimum in INTEGERS.items():
        value = OmegaConf.select(cfg, key, default=ABSENT)
        if value is ABSENT:  # a key of another task's config group
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise UserError(f"{key} must be an integer >= {minimum}, got {value!r} (e.g. {key}={max(minimum, 5)})")
    for key, zero_ok in NUMBERS.items():
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (value == 0 and not zero_ok):
            raise UserError(f"{key} must be a {'non-negative' if zero_ok else 'positive'} number, got {value!r}")
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and value not in choices:
            raise UserError(f"unknown {key} {value!r}; choose one of: {', '.join(choices)}")
    for key in ("data", "backbone", "outer.optimizer"):
        target = OmegaConf.select(cfg, f"{key}._target_", default=ABSENT)
        if key == "backbone" and target is ABSENT:  # tasks without a backbone
            continue
        if not isinstance(target, str) or not target.startswith(TRUSTED_TARGETS):
            raise UserError(f"{key}._target_ {target!r} is not allowed: only bilevel_cli.* and torch.* may be "
                            "instantiated from a config")
    patience = OmegaConf.select(cfg, "trainer.patience")
    if patience is not None and (not isinstance(patience, int) or isinstance(patience, bool) or patience < 1):
        raise UserError(f"trainer.patience must be null or an integer >= 1, got {patience!r}")
    candidates = OmegaConf.select(cfg, "trainer.select_T") or []
    if not all(isinstance(T, int) and not isinstance(T, bool) and T >= 1 for T in candidates):
        raise UserError(f"trainer.select_T must be a list of integers >= 1, got {list(candidates)} "
                        "(e.g. 'trainer.select_T=[1,3,5,10]')")
    options = OmegaConf.select(cfg, "hypergrad.options") or {}
    if "K" in options and not 0 <= options["K"] <= cfg.hypergrad.T:
        raise UserError(f"hypergrad.options.K must be in [0, hypergrad.T={cfg.hypergrad.T}], got {options['K']}")


def resolve_device(name: str) -> torch.device:
    """`auto`: the first CUDA GPU when one is visible, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use device=auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA GPU is visible; use device=cpu or device=auto")
    return device
