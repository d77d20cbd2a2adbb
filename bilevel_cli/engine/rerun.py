"""The command that continues a run where it stopped, for messages to copy from: the run's own overrides (a sweep
job's included), then its directory, quoted so that both the shell and Hydra's override grammar read it whole (a
sweep job's directory name holds '=' and ',')."""

import re
import shlex
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

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
        for source in hydra.runtime.config_sources:
            if source.provider == "command-line" and source.schema == "file":  # `-cd DIR`
                words += ["-cd", source.path]
        words += [o for o in hydra.overrides.task if o.lstrip("+~").split("=", 1)[0] != "resume"]
    world = distributed.world_size()
    program = f"torchrun --nproc_per_node={world} -m bilevel_cli train" if world > 1 else "bilevel train"
    return " ".join([program, *map(_shell_word, [*words, f"hydra.run.dir={_hydra_value(str(run_dir))}"])])


def _hydra_value(text: str) -> str:
    return text if PLAIN_VALUE.fullmatch(text) else "'" + text.replace("'", "\\'") + "'"


def _shell_word(word: str) -> str:
    # Double quotes where they suffice: around Hydra's single quotes they read as typed, where shlex.quote's
    # '"'"' does not.
    if PLAIN_WORD.fullmatch(word):
        return word
    return f'"{word}"' if not set('"$`\\!') & set(word) else shlex.quote(word)
