"""Decoded-image caches: one torch file per data set (or split), written atomically, rebuilt when its sources change."""

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from bilevel_cli.errors import UserError


def save(obj, path: Path) -> None:
    """Write obj to path so that an interrupted run never leaves a half-written cache behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary file in the same folder, so that os.replace is a rename on one file system. It is opened like any
    # new file rather than by tempfile.mkstemp, whose 0600 mode would hide a cache beside shared data from other users.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "xb") as file:
            torch.save(obj, file)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def load(path: Path):
    """What save wrote at path, or None when there is no such file or it cannot be read (truncated, another format)."""
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # missing or corrupt: the caller builds it again
        return None


def fingerprint(sources: Sequence[Path]) -> tuple[int, int]:
    """Number and total byte size of the source files: cheap to take from os.stat, and changed by any added,
    removed, truncated or re-encoded file."""
    return len(sources), sum(os.stat(source).st_size for source in sources)


def load_or_build(path: Path, sources: Sequence[Path], build: Callable[[], dict]) -> dict:
    """The dict cached at path if it was built from sources like these, else build()'s dict, cached at path."""
    stamp = fingerprint(sources)
    cached = load(path)
    if cached is not None and cached.get("fingerprint") == stamp:
        return cached
    built = {**build(), "fingerprint": stamp}
    try:
        save(built, path)
    except OSError as error:
        raise UserError(f"cannot write the data cache {path} ({error.strerror or error}); "
                        "set data.cache_dir=<a writable dir>") from error
    return built
