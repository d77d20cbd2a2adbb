"""Checks of the command line and of the composed config before any work starts, each failing with one line that
names the fix."""

import difflib
import os
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from bilevel_cli.core import METHODS, OPTIMIZERS, hypergradient
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
BOOLEANS = ("inner.learn_lr", "data.download", "backbone.pool", "task.exact", "task.centre",
            "task.curvature_scaled_rate")
CHOICES = {"task.name": tuple(BUILDERS), "hypergrad.method": METHODS, "inner.name": OPTIMIZERS, "backbone.norm": NORMS,
           "trainer.precision": ("fp32", "bf16")}
# sections of conf/train.yaml that are not config groups (a group's `task=3` is an unknown option): an example key
SECTIONS = {"trainer": "trainer.steps=1000", "paths": "paths.data_dir=/data"}
ABSENT = object()


def check_config(cfg: DictConfig) -> None:
    for key, example in SECTIONS.items():  # `trainer=3` composes, and would fail at the first trainer.<key>
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, DictConfig):
            raise UserError(f"{key} is a section of settings, not a value (got {key}={value!r}); set its keys, "
                            f"e.g. {example}")
    for key, minimum in INTEGERS.items():
        value = OmegaConf.select(cfg, key, default=ABSENT)
        if value is ABSENT:  # a key of another task's config group
            continue
        if not _is_int(value) or value < minimum:
            raise UserError(f"{key} must be an integer >= {minimum}, got {value!r} (e.g. {key}={max(minimum, 5)})")
    for key, (zero_ok, example) in NUMBERS.items():
        value = OmegaConf.select(cfg, key, default=ABSENT)
        if value is ABSENT:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (value == 0 and not zero_ok):
            raise UserError(f"{key} must be a {'non-negative' if zero_ok else 'positive'} number, got {value!r} "
                            f"(e.g. {key}={example})")
    channels = OmegaConf.select(cfg, "backbone.channels", default=ABSENT)  # conv4: one width; resnet12: a list
    widths = list(channels) if isinstance(channels, ListConfig) else [channels]
    if channels is not ABSENT and not (widths and all(_is_int(w) and w >= 1 for w in widths)):
        shown = widths if isinstance(channels, ListConfig) else channels
        raise UserError(f"backbone.channels must be a positive integer (conv4) or a list of them (resnet12), got "
                        f"{shown!r} (e.g. backbone.channels=64 or 'backbone.channels=[64,160,320,640]')")
    for key in BOOLEANS:
        value = OmegaConf.select(cfg, key, default=ABSENT)
        if value is not ABSENT and not isinstance(value, bool):
            raise UserError(f"{key} must be true or false, got {value!r}")
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
    if patience is not None and (not _is_int(patience) or patience < 1):
        raise UserError(f"trainer.patience must be null or an integer >= 1, got {patience!r}")
    candidates = OmegaConf.select(cfg, "trainer.select_T") or []
    if not isinstance(candidates, (list, ListConfig)) or not all(
            _is_int(T) and T >= 1 for T in candidates):
        shown = list(candidates) if isinstance(candidates, ListConfig) else candidates
        raise UserError(f"trainer.select_T must be a list of integers >= 1, got {shown!r} "
                        "(e.g. 'trainer.select_T=[1,3,5,10]')")
    method, inner = cfg.hypergrad.method, OmegaConf.select(cfg, "inner.name")
    if method == "reversible" and inner != "momentum":
        raise UserError(f"hypergrad=reversible reverses heavy-ball momentum; use inner=momentum (got inner={inner})")
    _check_options(cfg)


def _check_options(cfg: DictConfig) -> None:
    """The inner optimizer's and the hypergradient's options, checked by the core's own code on a problem of one
    number before any data loads: a value out of range or an unknown option is one line now, not a traceback at the
    first hyper-iteration."""
    for section in ("inner.options", "hypergrad.options"):  # numbers (Adam's betas: a list of them), or null
        for key, value in (OmegaConf.select(cfg, section) or {}).items():
            values = list(value) if isinstance(value, ListConfig) else [value]
            if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
                raise UserError(f"{section}.{key} must be a number, got {value!r}")
    if OmegaConf.select(cfg, "inner.name") is None:
        return
    options = OmegaConf.to_container(cfg.inner.options)
    try:
        inner = OPTIMIZERS[cfg.inner.name](lambda w, h: (w["w"] - h["h"]).square().sum(), lr=cfg.inner.lr, **options)
    except (TypeError, ValueError) as error:
        raise UserError(f"inner.options: {error}") from None
    options = OmegaConf.to_container(cfg.hypergrad.options)
    try:
        with torch.random.fork_rng(devices=[]):  # EvoGrad draws noise: the run's random numbers stay untouched
            hypergradient(inner.step, lambda w, h: w["w"].square().sum(), inner.init({"w": torch.zeros(1)}),
                          {"h": torch.ones(1, requires_grad=True)}, cfg.hypergrad.T, cfg.hypergrad.method,
                          **options)
    except (TypeError, ValueError) as error:
        raise UserError(f"hypergrad.options: {error}") from None


def check_overrides(argv: list[str], config_dir: str | Path, config_name: str) -> None:
    """The overrides on the command line `argv`, checked before Hydra runs, whose own reports of these mistakes are
    several lines and exit code 1: every config group option named is a config of its group (each choice of a sweep,
    `-m hypergrad=reverse,nope`), and the config composes with them, a sweep at its first choice (an unknown key
    such as `trainer.stepz=3`, an unknown `hydra/launcher`, a value Hydra cannot parse), into a run directory that
    can be created. The user's own config folders (`-cd DIR`, `hydra.searchpath=[...]`) are searched as Hydra
    searches them."""
    multirun = any(arg in ("-m", "--multirun", "hydra.mode=MULTIRUN") for arg in argv)
    parser = OverridesParser.create()
    overrides = []
    for arg in argv:
        if arg.startswith("-") or ("=" not in arg and not arg.startswith("~")):  # Hydra's flags and their values
            continue
        try:
            (override,) = parser.parse_overrides([arg])
        except HydraException as error:
            raise UserError(f"cannot parse {arg!r}: {_one_line(error)}") from None
        overrides.append((arg, override))
    search = _search_path(argv, [override for _, override in overrides])
    # A group's name has no dot (hydra/launcher); trainer.steps is a key.
    groups = {override.key_or_group for _, override in overrides if "." not in override.key_or_group}
    options = _group_options(config_dir, config_name, search, groups)
    composed = list(search)
    for arg, override in overrides:
        _check_group_option(override, options.get(override.key_or_group, []))
        if override.key_or_group == "hydra.searchpath":
            continue  # in `search`, with the -cd folder
        if multirun and override.is_sweep_override():
            try:
                arg = f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}"
            except HydraException:  # a sweep that only its sweeper enumerates (glob, interval): not checked here
                continue
        composed.append(arg)
    if not any(arg.split("=")[0] in CONFIG_FLAGS for arg in argv):  # another config than config_name's
        _check_output_dir(_check_composes(config_dir, config_name, composed), multirun)


# Flags that make Hydra compose another config than the command's: the composition check does not apply.
CONFIG_FLAGS = ("-cn", "--config-name", "-cp", "--config-path")


def _search_path(argv: list[str], overrides: list) -> list[str]:
    """The user's config folders as one `hydra.searchpath=[...]` override (none when there are none): the entries
    of theirs, then the folder of `-cd DIR` (`--config-dir`), which Hydra searches after the package's configs."""
    entries = []
    for override in overrides:
        if override.key_or_group == "hydra.searchpath":
            if not isinstance(override.value(), list):
                raise UserError(f"hydra.searchpath must be a list; write hydra.searchpath=[{override.value()}]")
            entries += override.value()
    for flag, value in zip(argv, [*argv[1:], None]):
        if flag.startswith("--config-dir="):
            flag, value = flag.split("=", 1)
        if flag in ("-cd", "--config-dir"):
            if value is None or not Path(value).is_dir():
                raise UserError(f"{flag} {value or ''}: no such folder; give the folder of your own config files")
            entries.append(f"file://{Path(value).absolute()}")
    quoted = [f"'{entry}'" for entry in entries]  # a folder's name may hold spaces or commas
    return [f"hydra.searchpath=[{','.join(quoted)}]"] if entries else []


def _group_options(config_dir: str | Path, config_name: str, search: list[str], names: set[str]) -> dict:
    """For each name, the options of the config group of that name in the package's and the user's folders (none:
    no such group)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir)):
        loader = GlobalHydra.instance().config_loader()
        return {name: loader.get_group_options(name, config_name=config_name, overrides=search) for name in names}


def _check_group_option(override, options: list[str]) -> None:
    if not options or override.is_delete() or override.value_type not in (
            ValueType.ELEMENT, ValueType.CHOICE_SWEEP, ValueType.SIMPLE_CHOICE_SWEEP):
        return
    chosen = override.sweep_string_iterator() if override.is_sweep_override() else [override.value()]
    for choice in chosen:
        # A list selects several options of the group at once (logger=[wandb,tensorboard]).
        for option in choice if isinstance(choice, list) else [choice]:
            if option is not None and option not in options:
                raise UserError(missing_option(override.key_or_group, option, options))


def _check_composes(config_dir: str | Path, config_name: str, overrides: list[str]) -> DictConfig:
    try:
        return _compose(config_dir, config_name, overrides)
    except MissingConfigException as error:
        if error.missing_cfg_file and error.options is not None:  # hydra/launcher=nope, or one in a defaults list
            group, _, option = error.missing_cfg_file.rpartition("/")
            raise UserError(missing_option(group, option, error.options)) from None
        raise UserError(_one_line(error)) from None
    except HydraException as error:
        key = getattr(error.__cause__, "full_key", None)
        if not isinstance(error.__cause__, (ConfigAttributeError, ConfigKeyError)) or not key:
            raise UserError(_one_line(error)) from None
        raise UserError(_unknown_key(key, config_dir, config_name, overrides)) from None


def _check_output_dir(cfg: DictConfig, multirun: bool) -> None:
    """Hydra creates the run directory (a sweep's, with -m) before the command starts, and reports a failure to
    create it with a traceback: the nearest folder of it that exists must be one we may write in."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    path = Path(OmegaConf.select(cfg, key)).absolute()
    existing = next(folder for folder in [path, *path.parents] if folder.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        reason = f"this user may not write in {existing}" if existing.is_dir() else f"{existing} is a file"
        raise UserError(f"cannot create the run directory {path}: {reason}; choose another with {key}=...")


# Hydra's launchers that come from a plugin (conf/hydra/launcher/parallel.yaml and slurm.yaml build on them): the
# option is missing when the plugin is not installed.
LAUNCHER_PLUGINS = {"joblib": "hydra-joblib-launcher", "submitit_local": "hydra-submitit-launcher",
                    "submitit_slurm": "hydra-submitit-launcher"}


def missing_option(group: str, option: str, options: list[str]) -> str:
    if group == "hydra/launcher" and option in LAUNCHER_PLUGINS:
        return (f"hydra/launcher {option!r} needs the plugin {LAUNCHER_PLUGINS[option]}, which is not installed; "
                "pip install -e \".[launchers]\"")
    return f"unknown {group} {option!r}; choose one of: {', '.join(options)}"


def _compose(config_dir: str | Path, config_name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir)):
        return compose(config_name, overrides=overrides, return_hydra_config=True)


def _unknown_key(key: str, config_dir: str | Path, config_name: str, overrides: list[str]) -> str:
    """`trainer.stepz is not in the config (did you mean trainer.steps?); ...`: the closest key of the config
    composed without the override that named it."""
    culprit = next((arg for arg in overrides if f"{_key(arg)}.".startswith(f"{key}.")), None)
    key = _key(culprit) if culprit else key  # zzz.qqq=1 fails at zzz
    try:
        config = OmegaConf.to_container(_compose(config_dir, config_name, [a for a in overrides if a != culprit]))
        match = difflib.get_close_matches(key, list(_keys(config)), n=1)
    except HydraException:
        match = []
    hint = f" (did you mean {match[0]}?)" if match else ""
    append = f"; to add a new key, write +{culprit.lstrip('+')}" if culprit and "=" in culprit else ""
    return f"{key} is not in the config{hint}{append}"


def _key(override: str) -> str:
    """The key an override sets, by Hydra's own parser (`+a.b@pkg=1` sets a.b); `override` has parsed before."""
    (parsed,) = OverridesParser.create().parse_overrides([override])
    return parsed.key_or_group


def _keys(node: dict, prefix: str = ""):
    for name, value in node.items():
        yield prefix + str(name)
        if isinstance(value, dict):
            yield from _keys(value, f"{prefix}{name}.")


def _one_line(error: Exception) -> str:
    """Hydra's message on one line, without its listing of the config search path."""
    text = str(error).split("\nConfig search path:")[0]
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


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


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # YAML's true is an int to Python
