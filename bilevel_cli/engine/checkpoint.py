"""Checkpoints: plain tensors and containers only, written atomically, loaded without unpickling code."""

import os
from pathlib import Path

import torch

from bilevel_cli.errors import UserError


def save(path: Path, state: dict) -> None:
    """Write to a temporary file beside `path`, then rename: a crash never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (pass checkpoint=<run dir>/best.pt of a finished run)")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise UserError(f"cannot read checkpoint {path}: {type(error).__name__}: {str(error).splitlines()[0]} "
                        "(is it a bilevel checkpoint, written completely?)") from None
    if not isinstance(state, dict) or "task" not in state or "config" not in state:
        raise UserError(f"{path} is not a bilevel checkpoint (no task state or config in it)")
    return state
