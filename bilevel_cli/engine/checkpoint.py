"""Checkpoints: plain tensors and containers only, written atomically, loaded without unpickling code."""

import os
import pickle
import re
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from bilevel_cli.engine.files import write_atomically
from bilevel_cli.engine.rerun import continue_command
from bilevel_cli.errors import UserError

ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive
PICKLE_PROTOCOL = b"\x80"  # how a pickle of protocol 2 or later starts: torch.save's legacy format, or a plain one
# Config keys that fix the shapes of a task's outer variables: a checkpoint serves only configs that agree on them.
ARCHITECTURE = ("backbone", "data._target_", "inner.learn_lr")


def save(path: Path, state: dict) -> None:
    """Atomically (see `files.write_atomically`). To a file object: torch.save to a path reports a full disk as a
    RuntimeError without errno."""
    write_atomically(path, lambda file: torch.save(state, file), "the run's earlier checkpoints are intact: make "
                     f"room, then continue from its last.pt: {continue_command(path.parent)}")


def load(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict:
    """The checkpoint at `path`, read with torch's weights-only unpickler: a file that names any other Python
    object (which unpickling would import and call) is refused before anything of it runs."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a folder; pass the file, e.g. checkpoint={path / 'best.pt'}")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (pass checkpoint=<run dir>/best.pt of a finished run)")
    try:
        with open(path, "rb") as file:
            magic = file.read(len(ZIP_MAGIC))
        # The weights-only unpickler warns about pickle protocols torch.save does not write: such a file is refused
        # or read all the same, and the warning would be a second line on stderr.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=device, weights_only=True)
    except OSError as error:
        raise UserError(f"cannot read checkpoint {path} ({error.strerror or error}); check its permissions") from None
    except Exception as error:  # torch raises several types for truncated, foreign or crafted files
        if isinstance(error, pickle.UnpicklingError) and magic.startswith((ZIP_MAGIC, PICKLE_PROTOCOL)):
            found = re.search(r"GLOBAL (\S+)", str(error))
            what = f"a reference to {found.group(1)}" if found else "objects other than tensors and plain containers"
            raise UserError(f"checkpoint {path} was not loaded: it holds {what}, which unpickling would import and "
                            "call; use a best.pt or last.pt written by bilevel train") from None
        if magic != ZIP_MAGIC:
            raise UserError(f"cannot read checkpoint {path}: it is not a file written by torch.save; pass the best.pt "
                            "or last.pt of a run") from None
        reason = str(error).split(". ")[0]
        raise UserError(f"cannot read checkpoint {path}: it is truncated or damaged ({reason}); copy it again, or use "
                        "the run's other checkpoint (best.pt or last.pt)") from None
    if not isinstance(state, dict) or "task" not in state or not isinstance(state.get("config"), dict):
        raise UserError(f"{path} is not a bilevel checkpoint (no task state or config in it); pass the best.pt or "
                        "last.pt of a run")
    return state


def check_compatible(state: dict, cfg: DictConfig, path: str | os.PathLike) -> None:
    """Refuses, in one line, a checkpoint that cannot serve `cfg`: one of another task, or one whose outer variables
    another architecture (the ARCHITECTURE keys) shaped otherwise. Cheap: it compares the two configs only."""
    trained, requested = state["config"], OmegaConf.to_container(cfg, resolve=True)
    task, wanted = _get(trained, "task.name"), _get(requested, "task.name")
    if task != wanted:
        raise UserError(f"checkpoint {path} is from task={task}, not task={wanted}; use a checkpoint of a "
                        f"task={wanted} run, or drop the task override")
    for key in ARCHITECTURE:
        differing = _differences(_get(trained, key), _get(requested, key), key)
        if differing:
            name, was, now = differing[0]
            raise UserError(f"checkpoint {path} was trained with {name}={was}, but the config asks for {name}={now}; "
                            "drop that override (the model must be the one the checkpoint was trained as)")


def _get(tree: dict, key: str):
    """tree's value at the dotted key, None where it has none."""
    for name in key.split("."):
        tree = tree.get(name) if isinstance(tree, dict) else None
    return tree


def _differences(was, now, key: str) -> list[tuple[str, object, object]]:
    """(dotted key, value in was, value in now) of every leaf where two config subtrees disagree."""
    if isinstance(was, dict) and isinstance(now, dict):
        return [found for name in sorted(was.keys() | now.keys())
                for found in _differences(was.get(name), now.get(name), f"{key}.{name}")]
    return [] if was == now else [(key, was, now)]


def load_task_state(task: torch.nn.Module, state: dict, path: str | os.PathLike) -> None:
    """task.load_state_dict(state["task"]), or one line naming the first entry that does not fit, where torch would
    list every mismatch over many lines."""
    expected, found = task.state_dict(), state["task"]
    if not isinstance(found, dict):
        raise UserError(f"checkpoint {path} holds no task state; pass the best.pt or last.pt of a run")
    missing = [name for name in expected if name not in found]
    extra = [name for name in found if name not in expected]
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has an unknown entry {extra[0]}"
        raise UserError(f"checkpoint {path} {what}: it was written for another task or by another version; use a "
                        "checkpoint written by this version's bilevel train")
    for name, tensor in expected.items():
        if not isinstance(found[name], torch.Tensor) or found[name].shape != tensor.shape:
            shape = tuple(found[name].shape) if isinstance(found[name], torch.Tensor) else type(found[name]).__name__
            raise UserError(f"checkpoint {path} holds {name} of shape {shape} but this config builds "
                            f"{tuple(tensor.shape)}; evaluate it under the config it was trained with")
    task.load_state_dict(found)
