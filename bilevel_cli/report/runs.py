"""Run directories on disk → runs in memory, and runs → groups that differ in their overrides (seeds pooled)."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bilevel_cli.engine.loggers import flatten, run_overrides
from bilevel_cli.errors import UserError

# What makes a directory a run's: train.py writes config.yaml, Hydra writes .hydra/ before the job starts.
RUN_MARKERS = ("config.yaml", ".hydra/overrides.yaml")
# Repeats of one setting: pooled into a mean over seeds rather than told apart.
POOLED = "seed"


@dataclass
class Run:
    path: Path
    config: dict            # flattened, dotted keys as overrides name them
    overrides: dict[str, str]
    choices: dict[str, str]  # config group → the option the run was composed with (Hydra's record)
    summary: dict | None    # None: the run has not finished (no summary.json)
    metrics: list[dict]

    def setting(self, key: str) -> str:
        """The value of an overridden key in this run: the resolved config's, or for a config group the option
        typed (`hypergrad=truncated`) or, when this run did not override a group another run did, the one it was
        composed with (`reverse`); "default" for a run without Hydra's record."""
        if key in self.config:
            return str(self.config[key])
        return self.overrides.get(key) or self.choices.get(key) or "default"


@dataclass
class Group:
    settings: dict[str, str]  # the differing keys → this group's values
    runs: list[Run] = field(default_factory=list)

    @property
    def finished(self) -> list[Run]:
        return [run for run in self.runs if run.summary is not None]

    @property
    def label(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.settings.items()) or "all runs"


def find_runs(paths: list[Path]) -> list[Run]:
    """Every run directory at or under each path (a run, a sweep, or all of outputs/), in path order."""
    runs = []
    for path in paths:
        if not path.is_dir():
            raise UserError(f"{path} is not a directory; pass run or multirun directories (outputs/...)")
        found = [load_run(directory) for directory in _run_directories(path)]
        if not found:
            raise UserError(f"no runs found under {path}: a run directory holds config.yaml or .hydra/overrides.yaml")
        runs.extend(found)
    return runs


def _run_directories(root: Path) -> list[Path]:
    directories = []
    for directory, subdirectories, _ in os.walk(root):
        directory = Path(directory)
        if any((directory / marker).is_file() for marker in RUN_MARKERS):
            directories.append(directory)
            subdirectories.clear()  # runs do not nest: what lies below is the run's own (wandb/, .hydra/)
        else:
            subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
    return directories


def load_run(path: Path) -> Run:
    config = _read(path / "config.yaml", yaml.safe_load) or {}
    summary = _read(path / "summary.json", json.loads)
    return Run(path, flatten(config), run_overrides(path), _group_choices(path), summary,
               _read_metrics(path / "metrics.jsonl"))


def _group_choices(path: Path) -> dict[str, str]:
    """Config group → option, as Hydra recorded the composition (`hydra.runtime.choices` in .hydra/hydra.yaml);
    groups left unset are left out. Empty for a run not started by Hydra."""
    hydra = (_read(path / ".hydra" / "hydra.yaml", yaml.safe_load) or {}).get("hydra", {})
    choices = hydra.get("runtime", {}).get("choices", {})
    return {group: option for group, option in choices.items() if option is not None}


def _read(path: Path, parse):
    if not path.is_file():
        return None
    try:
        return parse(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise UserError(f"cannot read {path}: {error}") from None


def _read_metrics(path: Path) -> list[dict]:
    """The logged steps; a last line cut short by a killed run is left out rather than failing the comparison."""
    if not path.is_file():
        return []
    metrics = []
    for line in path.read_text().splitlines():
        try:
            metrics.append(json.loads(line))
        except ValueError:
            continue
    return metrics


def group_runs(runs: list[Run]) -> tuple[list[Group], dict[str, str]]:
    """Groups of runs that agree on every overridden key but the seed, in natural order of the differing values;
    and the overrides all runs share (the sweep's fixed settings)."""
    keys = list(dict.fromkeys(key for run in runs for key in run.overrides if key != POOLED))
    differing = [key for key in keys if len({run.setting(key) for run in runs}) > 1]
    common = {key: runs[0].setting(key) for key in keys if key not in differing}
    groups: dict[tuple, Group] = {}
    for run in runs:
        settings = {key: run.setting(key) for key in differing}
        groups.setdefault(tuple(settings.values()), Group(settings)).runs.append(run)
    ordered = sorted(groups.values(), key=lambda group: [_natural(value) for value in group.settings.values()])
    return ordered, common


def _natural(value: str) -> tuple:
    """T=2 before T=10: numbers by value, before any text."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)
