"""Checks of a composed config before any work starts, each failing with one line that names the fix."""

from pathlib import Path

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from bilevel_cli.core import METHODS, OPTIMIZERS
from bilevel_cli.engine.build import BACKBONE_TASKS, BUILDERS, check_targets
from bilevel_cli.errors import UserError
from bilevel_cli.models.batchnorm import NORMS

# key: the smallest value allowed
INTEGERS = {"seed": 0, "hypergrad.T": 1, "task.ways": 2, "task.shots": 1, "task.queries": 1, "task.meta_batch": 1,
            "trainer.steps": 1, "trainer.log_every": 1, "trainer.val_every": 1, "trainer.val_episodes": 1,
            "trainer.test_episodes": 1, "trainer.eval_batch": 1, "trainer.max_bad_steps": 1,
            "task.train": 1, "task.val": 1, "task.test": 1, "task.corrupted": 0}
# key: whether zero is allowed, a sensible value
NUMBERS = {"inner.lr": (False, 0.1), "outer.optimizer.lr": (False, 0.001), "outer.decay": (True, 0)}
CHOICES = {"task.name": tuple(BUILDERS), "hypergrad.method": METHODS, "inner.name": OPTIMIZERS, "backbone.norm": NORMS,
           "trainer.precision": ("fp32", "bf16")}
ABSENT = object()


def check_config(cfg: DictConfig) -> None:
    for key, minimum in INTEGERS.items():
        value = OmegaConf.select(cfg, key, default=ABSENT)
        if value is ABSENT:  # a key of another task's config group
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise UserError(f"{key} must be an integer >= {minimum}, got {value!r} (e.g. {key}={max(minimum, 5)})")
    for key, (zero_ok, example) in NUMBERS.items():
        value = OmegaConf.select(cfg, key, default=ABSENT)
        if value is ABSENT:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (value == 0 and not zero_ok):
            raise UserError(f"{key} must be a {'non-negative' if zero_ok else 'positive'} number, got {value!r} "
                            f"(e.g. {key}={example})")
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and value not in choices:
            raise UserError(f"unknown {key} {value!r}; choose one of: {', '.join(choices)}")
    if OmegaConf.select(cfg, "trainer.precision") == "bf16" and cfg.task.name not in BACKBONE_TASKS:
        raise UserError(f"trainer.precision=bf16 runs a backbone in bfloat16, and task={cfg.task.name} has none; "
                        "drop the override (it applies to task=" + " and ".join(BACKBONE_TASKS) + ")")
    check_targets(cfg)
    resume = OmegaConf.select(cfg, "resume", default=None)
    if resume not in (None, True, False):
        raise UserError(f"resume must be true, false or null, got {resume!r} (resume=true continues the run in "
                        "hydra.run.dir)")
    patience = OmegaConf.select(cfg, "trainer.patience")
    if patience is not None and (not isinstance(patience, int) or isinstance(patience, bool) or patience < 1):
        raise UserError(f"trainer.patience must be null or an integer >= 1, got {patience!r}")
    candidates = OmegaConf.select(cfg, "trainer.select_T") or []
    if not all(isinstance(T, int) and not isinstance(T, bool) and T >= 1 for T in candidates):
        raise UserError(f"trainer.select_T must be a list of integers >= 1, got {list(candidates)} "
                        "(e.g. 'trainer.select_T=[1,3,5,10]')")
    method, options = cfg.hypergrad.method, OmegaConf.select(cfg, "hypergrad.options") or {}
    K = options.get("K", 0)  # truncated's back-propagated steps (EvoGrad's K, its number of copies, is free)
    if method == "truncated" and (not isinstance(K, int) or isinstance(K, bool) or not 0 <= K <= cfg.hypergrad.T):
        raise UserError(f"hypergrad.options.K must be in [0, hypergrad.T={cfg.hypergrad.T}], got {K!r}")
    inner = OmegaConf.select(cfg, "inner.name")
    if method == "reversible" and inner != "momentum":
        raise UserError(f"hypergrad=reversible reverses heavy-ball momentum; use inner=momentum (got inner={inner})")


def check_group_options(argv: list[str], config_dir: str | Path) -> None:
    """Every config group option that the command line `argv` names (`backbone=nope`, `-m hypergrad=reverse,nope`)
    is a file of its group. Meant to run before Hydra composes: Hydra's own report of a missing option is a dozen
    lines and exit code 1."""
    groups = {folder.name: folder for folder in Path(config_dir).iterdir() if folder.is_dir()}
    parser = OverridesParser.create()
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:  # Hydra's flags and their values
            continue
        try:
            (override,) = parser.parse_overrides([arg])
        except HydraException:  # a syntax error, which Hydra reports in one line itself
            continue
        folder = groups.get(override.key_or_group)
        if folder is None or override.is_delete() or override.value_type not in (
                ValueType.ELEMENT, ValueType.CHOICE_SWEEP, ValueType.SIMPLE_CHOICE_SWEEP):
            continue
        options = sorted(file.stem for file in folder.glob("*.yaml"))
        chosen = override.sweep_string_iterator() if override.is_sweep_override() else [override.value()]
        for choice in chosen:
            # A list selects several options of the group at once (logger=[wandb,tensorboard]).
            for option in choice if isinstance(choice, list) else [choice]:
                if option is not None and option not in options:
                    raise UserError(f"unknown {folder.name} {option!r}; choose one of: {', '.join(options)}")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bfloat16 natively: a CUDA GPU with bf16 units, or a CPU with AVX512-BF16 or
    AMX. Elsewhere autocast emulates it, slower than float32 (12 times on a 2-core AVX2 CPU: BENCHMARKS.md)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


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
