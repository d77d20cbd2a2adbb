"""The command a stopped run prints to continue it: the shell and Hydra read it back as the run's own overrides and
directory, whatever the directory's name (tests/engine/test_resume.py runs it)."""

import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser

from bilevel_cli.cli import CONFIG_DIR
from bilevel_cli.engine.rerun import continue_command


def _read_back(command: str) -> list:
    """The command as the shell splits it, each override as Hydra's grammar reads it: (key, value)."""
    program, *words = shlex.split(command)
    parser = OverridesParser.create()
    return [program, *((o.key_or_group, o.value()) for o in map(parser.parse_override, words[1:]))]


@pytest.mark.parametrize("name", [
    "2026-12-01_10-00-00",
    "0_experiment=omniglot_5way_1shot_T10,seed=1",  # a sweep job's: '=' and ','
    "3_hypergrad.T=10,trainer.select_T=[5,10,20]",  # brackets, which the shell would glob
    "it's $HOME, with spaces",
])
def test_any_directory_name_reads_back_whole(name, tmp_path):
    run_dir = tmp_path / name
    command = continue_command(run_dir)
    assert command.startswith("bilevel train ")
    assert _read_back(command) == ["bilevel", ("hydra.run.dir", str(run_dir))]


@pytest.fixture
def hydra_job():
    """The Hydra config of a job run with these overrides, as `bilevel train` sees it."""
    def compose_job(*overrides):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            HydraConfig.instance().set_config(compose("train", overrides=list(overrides), return_hydra_config=True))
    yield compose_job
    HydraConfig.instance().cfg = None


def test_the_runs_overrides_come_along_and_resume_is_left_to_its_default(hydra_job):
    hydra_job("experiment=glyphs_20way_1shot", "trainer.select_T=[5,10,20]", "resume=true", "+trainer.note=x",
              "hydra/launcher=basic")
    assert _read_back(continue_command(Path("/runs/0_seed=1"))) == [
        "bilevel", ("experiment", "glyphs_20way_1shot"), ("trainer.select_T", [5, 10, 20]), ("trainer.note", "x"),
        ("hydra.run.dir", "/runs/0_seed=1")]


def test_under_torchrun_the_command_is_torchruns(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert continue_command(Path("/runs/a")) == "torchrun --nproc_per_node=4 -m bilevel_cli train hydra.run.dir=/runs/a"
