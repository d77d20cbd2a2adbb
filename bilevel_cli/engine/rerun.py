"""The command that continues a run, or a whole sweep, where it stopped, for messages to copy from: the run's own
overrides (a sweep job's included), then its directory, quoted so that both the shell and Hydra's override grammar
read it whole (a sweep job's directory name holds '=' and ',')."""

import re
import shlex
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from bilevel_cli.engine import distributed

PLAIN_VALUE = re.compile(r"[\w./:@%+~-]+")  # a value Hydra's grammar reads unquoted
PLAIN_WORD = re.compile(r"[\w./:@%+~=,-]+")  # a word the shell passes as it is


def continue_command(run_dir: Path) -> str:
    """`bilevel train [-cd <the run's config dir>] <the run's overrides> hydra.run.dir=<run_dir>`: with resume left
    at its default, it continues from the directory's last.pt, or starts afresh there when the run stopped before
    writing one."""
    words = []
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        words = _config_dirs(hydra) + _dropping(hydra.overrides.task, "resume")
    world = distributed.world_size()
    program = f"torchrun --nproc_per_node={world} -m bilevel_cli train" if world > 1 else "bilevel train"
    return " ".join([program, *map(_shell_word, [*words, f"hydra.run.dir={_hydra_value(str(run_dir))}"])])


def continue_sweep_command(hydra: DictConfig) -> str:
    """`bilevel train -m [-cd DIR] <the sweep's overrides> hydra.sweep.dir=<its directory>`: rerun, the sweep keeps
    its finished jobs, continues the stopped ones from their last.pt and starts the others."""
    words = [*_config_dirs(hydra), *_dropping(hydra.overrides.task, "resume"),
             *_dropping(hydra.overrides.hydra, "hydra.sweep.dir", "hydra.mode")]
    sweep_dir = str(Path(hydra.sweep.dir).resolve())
    return " ".join(["bilevel train -m", *map(_shell_word, [*words, f"hydra.sweep.dir={_hydra_value(sweep_dir)}"])])


def _config_dirs(hydra: DictConfig) -> list[str]:
    """`-cd DIR` when the command had one."""
    return [word for source in hydra.runtime.config_sources if source.provider == "command-line"
            and source.schema == "file" for word in ("-cd", source.path)]


def _dropping(overrides, *keys: str) -> list[str]:
    return [o for o in overrides if o.lstrip("+~").split("=", 1)[0] not in keys]


def _hydra_value(text: str) -> str:
    return text if PLAIN_VALUE.fullmatch(text) else "'" + text.replace("'", "\\'") + "'"


def _shell_word(word: str) -> str:
    # Double quotes where they suffice: around Hydra's single quotes they read as typed, where shlex.quote's
    # '"'"' does not.
    if PLAIN_WORD.fullmatch(word):
        return word
    return f'"{word}"' if not set('"$`\\!') & set(word) else shlex.quote(word)
