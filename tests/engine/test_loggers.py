"""The loggers: several at once, TensorBoard scalars and hparams, wandb grouping, and continuing a resumed run."""

import json
import pathlib

import pytest
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from bilevel_cli.engine.loggers import JsonlLogger, open_loggers, run_hparams, run_overrides
from bilevel_cli.errors import UserError

CONFIG = {"seed": 1, "task": {"name": "hyper_representation", "ways": 5, "shots": 1},
          "hypergrad": {"method": "reverse", "T": 3}, "trainer": {"steps": 4}, "logger": {}}
WANDB = {"project": "bilevel", "mode": "offline", "group": None, "name": None, "tags": []}


@pytest.fixture
def run_dir(tmp_path):
    """A sweep job's directory, with the overrides Hydra records for it."""
    run = tmp_path / "0_hypergrad.T=3,seed=1"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- hypergrad.T=3\n- seed=1\n- +data=glyphs\n")
    return run


def _log_steps(loggers, steps, loss):
    for step in steps:
        for logger in loggers:
            logger.log({"step": step, "outer_loss": loss(step), "val_acc": 50.0 + step})


def _finish(loggers, last_step):
    for logger in loggers:
        logger.finish({"test_acc": 60.0, "test_ci95": 1.5, "best_val_acc": 55.0, "last_step": last_step,
                       "method": "reverse", "T": 3})


def _steps(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def _scalars(run_dir, tag):
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {event.step: event.value for event in events.Scalars(tag)}


def test_the_default_logs_metrics_jsonl_only(run_dir):
    (logger,) = open_loggers(OmegaConf.create({}), run_dir, CONFIG, None)
    _log_steps([logger], [2, 4], lambda step: 1.0)
    _finish([logger], 4)
    assert _steps(run_dir / "metrics.jsonl") == [2, 4]
    assert not list(run_dir.glob("events.out.tfevents.*"))


def test_overrides_and_hparams_name_what_differs_between_runs(run_dir):
    assert run_overrides(run_dir) == {"hypergrad.T": "3", "seed": "1", "data": "glyphs"}
    hparams = run_hparams(CONFIG, run_overrides(run_dir))
    # Values from the resolved config (typed), a config group option as typed, the main keys always.
    assert hparams == {"task.name": "hyper_representation", "task.ways": 5, "task.shots": 1,
                       "hypergrad.method": "reverse", "hypergrad.T": 3, "seed": 1, "data": "glyphs"}


def test_tensorboard_writes_scalars_and_hparams_into_the_run_directory(run_dir):
    loggers = open_loggers(OmegaConf.create({"tensorboard": {"flush_secs": 30}}), run_dir, CONFIG, None)
    _log_steps(loggers, [2, 4], lambda step: 1.0 / step)
    _finish(loggers, 4)
    assert _scalars(run_dir, "outer_loss") == {2: 0.5, 4: 0.25}
    assert _scalars(run_dir, "summary/test_acc") == {4: 60.0}
    assert not [p for p in run_dir.iterdir() if p.is_dir() and p.name != ".hydra"]  # one run, not a subdirectory
    events = EventAccumulator(str(run_dir))
    events.Reload()
    hparams = events.PluginTagToContent("hparams")
    session = HParamsPluginData.FromString(hparams["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["hypergrad.T"].number_value == 3 and session.hparams["data"].string_value == "glyphs"
    experiment = HParamsPluginData.FromString(hparams["_hparams_/experiment"]).experiment
    assert {metric.name.tag for metric in experiment.metric_infos} == {
        "summary/test_acc", "summary/test_ci95", "summary/best_val_acc"}


def test_several_loggers_at_once_and_wandb_groups_by_sweep(run_dir, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = OmegaConf.create({"wandb": WANDB, "tensorboard": {"flush_secs": 30}})
    loggers = open_loggers(cfg, run_dir, CONFIG, "2026-12-01_10-00-00")
    assert [type(logger).__name__ for logger in loggers] == ["JsonlLogger", "TensorBoardLogger", "WandbLogger"]
    wandb_run = loggers[-1].run
    assert wandb_run.group == "2026-12-01_10-00-00" and wandb_run.name == run_dir.name
    assert wandb_run.config["overrides"] == {"hypergrad.T": "3", "seed": "1", "data": "glyphs"}
    _log_steps(loggers, [2], lambda step: 1.0)
    _finish(loggers, 2)
    assert _steps(run_dir / "metrics.jsonl") == [2] and list((run_dir / "wandb").glob("offline-run-*"))


def test_a_resumed_run_continues_every_logger_from_its_checkpoint(run_dir, monkeypatch):
    """Killed after logging step 6, resumed from the checkpoint of step 4: steps 5-6 are logged again, once."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = OmegaConf.create({"wandb": WANDB, "tensorboard": {"flush_secs": 30}})
    killed = open_loggers(cfg, run_dir, CONFIG, None)
    _log_steps(killed, [2, 4, 6], lambda step: 1.0)
    _, tensorboard, wandb_logger = killed  # what survives a kill: what was written so far
    tensorboard.writer.flush()
    wandb_logger.run.finish()
    with open(run_dir / "metrics.jsonl", "a") as cut:
        cut.write('{"step": 8, "outer_lo')
    first_id = (run_dir / "wandb_run_id").read_text()

    resumed = open_loggers(cfg, run_dir, CONFIG, None, resume_step=4)
    assert resumed[-1].run.id == first_id.strip()
    _log_steps(resumed, [6, 8], lambda step: 2.0)
    _finish(resumed, 8)
    assert _steps(run_dir / "metrics.jsonl") == [2, 4, 6, 8]
    assert _scalars(run_dir, "outer_loss") == {2: 1.0, 4: 1.0, 6: 2.0, 8: 2.0}


def test_a_fresh_start_in_a_used_directory_drops_the_old_lines(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 2}\n{"step": 4}\n')
    logger = JsonlLogger(tmp_path, resume_step=None)
    logger.log({"step": 2})
    logger.finish({})
    assert _steps(tmp_path / "metrics.jsonl") == [2]


@pytest.mark.skipif(not pathlib.Path("/dev/full").exists(), reason="needs /dev/full, a device that is always full")
def test_a_full_disk_while_logging_stops_the_run_with_one_line(tmp_path):
    logger = JsonlLogger(tmp_path, resume_step=None)
    logger.log({"step": 2})
    logger.file = open("/dev/full", "a", buffering=1)  # the disk fills up between two log lines
    with pytest.raises(UserError) as error:
        logger.log({"step": 4})
    assert str(error.value) == (
        f"cannot append step 4 to {tmp_path / 'metrics.jsonl'} (No space left on device); the run's checkpoints "
        f"are intact: make room, then continue from its last.pt: bilevel train hydra.run.dir={tmp_path}")
    assert logger.file.closed  # nothing left to flush, and fail, again at exit
    assert _steps(tmp_path / "metrics.jsonl") == [2]
