"""`bilevel <command> [overrides]`: each command is a Hydra app that composes a config and calls one function."""

import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bilevel_cli.engine import sweep
from bilevel_cli.errors import Interrupted, UserError

# An absolute path: Hydra then reads the YAML files directly, from a source checkout or an installed wheel.
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")

USAGE = """usage: bilevel <command> [key=value ...] [-m] [--cfg job] [--help] | bilevel --version

commands:
  train   learn a hyper-representation (bilevel few-shot learning); `bilevel train --help` lists the config
  eval    test a trained checkpoint: bilevel eval checkpoint=outputs/train/<run>/best.pt [key=value ...]
  compare compare runs: bilevel compare PATH... [--paper] [--out DIR] (table over seeds, HTML report, plots)

examples:
  bilevel train                                  glyphs 5-way 1-shot, offline, a few minutes on a CPU
  bilevel train task.shots=5 hypergrad.T=10      override any config value
  bilevel train -m hypergrad.T=1,5,10            a sweep: one run directory per job
  bilevel train experiment=glyphs_20way_1shot    an experiment file from conf/experiment/
"""


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def train_app(cfg: DictConfig) -> dict:
    from bilevel_cli.engine.train import train

    hc = HydraConfig.get()
    sweep = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None
    return _reporting(train, cfg, Path(hc.runtime.output_dir), sweep)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def eval_app(cfg: DictConfig) -> dict:
    from bilevel_cli.engine.evaluate import evaluate_checkpoint

    hc = HydraConfig.get()
    overrides = [o for o in hc.overrides.task if not o.startswith("checkpoint=")]
    # select, not cfg.checkpoint: a checkpoint left unset is the user's mistake, which evaluate_checkpoint reports.
    return _reporting(evaluate_checkpoint, OmegaConf.select(cfg, "checkpoint"), overrides, Path(hc.runtime.output_dir))


APPS = {"train": train_app, "eval": eval_app}


def _reporting(function, *args):
    """Mistakes in the user's input end the command with one line and exit code 2, not a traceback. A sweep's job
    says its line and returns instead, so that the other jobs go on (in a parallel sweep, its exit would make joblib
    kill them); the sweep's end sums up (engine/sweep.py)."""
    try:
        return function(*args)
    except UserError as error:
        _say(f"bilevel: error: {error}")
        if not sweep.in_local_sweep():
            sys.exit(2)
        sweep.mark_failed(HydraConfig.get().job.num)
    except Interrupted as stop:
        _say(f"bilevel: {stop}")
        if not sweep.in_local_sweep():
            sys.exit(stop.exit_code)


def _say(line: str) -> None:
    # One write, newline included: under torchrun every rank says the line at once, and print's two writes
    # (text, then end) let the ranks' lines run into each other.
    sys.stderr.write(line + "\n")


def _shell_completion(rest: list[str]) -> None:
    """Hydra's tab completion for the commands: `eval "$(bilevel -sc install=bash)"` installs it for `bilevel`; the
    shell then asks `bilevel -sc query=bash` with the line in COMP_LINE. Hydra completes a line of overrides after
    the program's name, so the command word is taken out of the line and picks the app that answers."""
    if len(rest) != 1:
        _say("bilevel: error: -sc takes one of install=SHELL, uninstall=SHELL or query=SHELL (e.g. install=bash)")
        sys.exit(2)
    command = "train"  # install and uninstall: any app writes the same script
    if rest[0].startswith("query="):
        line = os.environ.get("COMP_LINE", "")
        words = line.split() + ([""] if line.endswith(" ") else [])  # the last word is the one being completed
        if len(words) <= 2:
            print(" ".join(name for name in [*APPS, "compare"] if name.startswith(words[-1] if len(words) == 2 else "")))
            return
        command = words[1]
        if command not in APPS:
            return  # nothing to complete after `bilevel compare` or an unknown word
        os.environ["COMP_LINE"] = " ".join([words[0], *words[2:]])
    sys.argv = ["bilevel", "-sc", *rest]  # the installed script names the program after argv[0]
    APPS[command]()


def _say_versions() -> None:
    """What a bug report needs: this package's version and those of the libraries that compute and compose."""
    import platform

    import torch

    from bilevel_cli import __version__

    print(f"bilevel {__version__} (torch {torch.__version__}, hydra-core {hydra.__version__}, "
          f"python {platform.python_version()})")


def main(argv: list[str] | None = None) -> None:
    try:
        _run_command(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:  # Ctrl-C before training listens for it (while composing, loading data), or a second one
        _say("bilevel: interrupted; a run's directory keeps the checkpoint of its last validation, which a rerun there "
             "with the same overrides continues")
        sys.exit(128 + signal.SIGINT)


def _run_command(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        sys.exit(0 if argv else 2)
    if argv[0] in ("--version", "-V"):
        return _say_versions()
    command, rest = argv[0], argv[1:]
    if command in APPS and rest[:1] in (["-sc"], ["--shell-completion"]):  # the same as `bilevel -sc ...`
        command, rest = rest[0], rest[1:]
    if command in ("-sc", "--shell-completion"):
        return _shell_completion(rest)
    if command == "compare":  # a plain argparse command: it reads run directories, composes no config
        from bilevel_cli.report.command import compare

        return _reporting(compare, rest)
    if command not in APPS:
        print(f"bilevel: error: unknown command {command!r}; choose one of: {', '.join([*APPS, 'compare'])} "
              "(see bilevel --help)", file=sys.stderr)
        sys.exit(2)
    from bilevel_cli.engine.config import check_overrides

    _reporting(check_overrides, rest, CONFIG_DIR, command)  # the config files are named after the commands
    if command == "train":
        from bilevel_cli.engine.distributed import hydra_overrides

        rest = [*rest, *_reporting(hydra_overrides, rest)]  # one run directory for all torchrun processes
    sys.argv = [f"bilevel {command}", *rest]  # Hydra reads its overrides and flags from sys.argv
    try:
        APPS[command]()
    finally:
        ended = sweep.finish()
    if ended:
        _say(ended[0])
        sys.exit(ended[1])
