"""Checkpoints load without running code, and refuse in one line what cannot serve the requested config."""

import contextlib
import pathlib
import pickle

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from bilevel_cli.engine import checkpoint
from bilevel_cli.errors import UserError


class _WritesMarker:
    """Unpickled, it writes `marker`: what a crafted checkpoint would do with any other call."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.write_text, (self.marker, "unpickling ran code")


def _config(**changes) -> dict:
    """A few-shot training config as a checkpoint holds it, with dotted keys changed."""
    config = OmegaConf.create({
        "task": {"name": "hyper_representation", "ways": 5},
        "backbone": {"_target_": "bilevel_cli.models.Conv4", "channels": 8, "norm": "episode"},
        "data": {"_target_": "bilevel_cli.data.glyphs.load_glyphs", "root": "data"},
        "inner": {"name": "gd", "lr": 0.1, "learn_lr": False}, "hypergrad": {"T": 5}})
    for key, value in changes.items():
        OmegaConf.update(config, key, value)
    return OmegaConf.to_container(config)


def _error(function, *args) -> str:
    with pytest.raises(UserError) as error:
        function(*args)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_saved_state_loads_back(tmp_path):
    state = {"task": {"w": torch.arange(3.0)}, "config": _config(), "step": 7}
    checkpoint.save(tmp_path / "best.pt", state)
    loaded = checkpoint.load(tmp_path / "best.pt")
    assert torch.equal(loaded["task"]["w"], state["task"]["w"]) and loaded["config"] == state["config"]
    assert not (tmp_path / "best.pt.tmp").exists()


@pytest.mark.skipif(not pathlib.Path("/dev/full").exists(), reason="needs /dev/full, a device that is always full")
def test_a_full_disk_leaves_the_previous_checkpoint_intact_and_says_so(tmp_path):
    state = {"task": {"w": torch.arange(3.0)}, "config": _config(), "step": 7}
    checkpoint.save(tmp_path / "last.pt", state)
    (tmp_path / "last.pt.tmp").symlink_to("/dev/full")  # the next write goes to a full device
    message = _error(checkpoint.save, tmp_path / "last.pt", {**state, "step": 8})
    assert message == (f"cannot write {tmp_path / 'last.pt'} (No space left on device); the run's earlier checkpoints "
                       f"are intact: make room, then continue from its last.pt: bilevel train hydra.run.dir={tmp_path}")
    assert checkpoint.load(tmp_path / "last.pt")["step"] == 7
    assert not (tmp_path / "last.pt.tmp").is_symlink()  # removed


@pytest.mark.parametrize("write", [torch.save, lambda obj, path: path.write_bytes(pickle.dumps(obj))],
                         ids=["torch.save", "plain pickle"])
def test_crafted_pickle_is_refused_without_running_it(tmp_path, write):
    marker = tmp_path / "marker"
    crafted = tmp_path / "crafted.pt"
    write({"task": _WritesMarker(marker), "config": _config()}, crafted)
    # The file is a working exploit: an unrestricted load runs its code (a plain pickle, before torch finds that
    # it lacks torch's magic number).
    with contextlib.suppress(RuntimeError):
        torch.load(crafted, weights_only=False)
    assert marker.read_text() == "unpickling ran code"
    marker.unlink()
    message = _error(checkpoint.load, crafted)
    assert message.startswith(f"checkpoint {crafted} was not loaded: it holds ")
    assert not marker.exists()


def test_truncated_file_says_so(tmp_path):
    checkpoint.save(tmp_path / "best.pt", {"task": {"w": torch.zeros(1000)}, "config": _config()})
    (tmp_path / "cut.pt").write_bytes((tmp_path / "best.pt").read_bytes()[:2000])
    assert _error(checkpoint.load, tmp_path / "cut.pt").startswith(
        f"cannot read checkpoint {tmp_path / 'cut.pt'}: it is truncated or damaged")


@pytest.mark.parametrize("content", [b"", b"some notes, not a checkpoint\n"], ids=["empty", "text"])
def test_file_that_is_no_checkpoint_says_so(tmp_path, content):
    (tmp_path / "notes.pt").write_bytes(content)
    assert _error(checkpoint.load, tmp_path / "notes.pt").startswith(
        f"cannot read checkpoint {tmp_path / 'notes.pt'}: it is not a file written by torch.save")


def test_torch_file_of_something_else_is_not_a_bilevel_checkpoint(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "model.pt")
    assert "is not a bilevel checkpoint" in _error(checkpoint.load, tmp_path / "model.pt")


def test_missing_file_and_folder_name_the_fix(tmp_path):
    assert _error(checkpoint.load, tmp_path / "nowhere.pt").startswith("checkpoint not found")
    assert f"checkpoint={tmp_path / 'best.pt'}" in _error(checkpoint.load, tmp_path)


def test_checkpoint_of_another_task_is_refused():
    state = {"task": {}, "config": _config(**{"task.name": "hyper_cleaning"})}
    message = _error(checkpoint.check_compatible, state, OmegaConf.create(_config()), "hc.pt")
    assert message.startswith("checkpoint hc.pt is from task=hyper_cleaning, not task=hyper_representation")


@pytest.mark.parametrize("key, value", [("backbone.channels", 16), ("backbone.norm", "running"),
                                        ("inner.learn_lr", True)])
def test_another_architecture_is_refused_naming_the_key(key, value):
    state = {"task": {}, "config": _config()}
    message = _error(checkpoint.check_compatible, state, OmegaConf.create(_config(**{key: value})), "best.pt")
    was = OmegaConf.select(OmegaConf.create(_config()), key)
    assert message.startswith(f"checkpoint best.pt was trained with {key}={was}, but the config asks for {key}={value}")


def test_settings_of_the_episodes_may_change():
    state = {"task": {}, "config": _config()}
    checkpoint.check_compatible(state, OmegaConf.create(_config(**{"task.ways": 20, "hypergrad.T": 10})), "best.pt")


def test_state_of_other_shapes_names_the_tensor():
    task = nn.Linear(3, 2)
    state = {"task": {"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}}
    message = _error(checkpoint.load_task_state, task, state, "best.pt")
    assert message.startswith("checkpoint best.pt holds weight of shape (2, 4) but this config builds (2, 3)")


def test_state_of_another_task_names_what_is_missing():
    state = {"task": {"weights": torch.zeros(600)}}
    assert _error(checkpoint.load_task_state, nn.Linear(3, 2), state, "best.pt").startswith(
        "checkpoint best.pt lacks weight")


def test_fitting_state_is_loaded():
    source, task = nn.Linear(3, 2), nn.Linear(3, 2)
    checkpoint.load_task_state(task, {"task": source.state_dict()}, "best.pt")
    assert torch.equal(task.weight, source.weight)
