"""Files of a run directory written whole or not at all; a write that fails (a full disk, no permission) is one
line saying what was kept and what to do."""

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from bilevel_cli.errors import UserError


def write_atomically(path: Path, write: Callable[[BinaryIO], object], then: str) -> None:
    """`write` fills a temporary file beside `path`, which reaches the disk before it is renamed to `path`: a crash
    (of the run or the machine) never leaves a half-written file, and a failed write leaves the previous one as it
    was. `then` tells the user, after the reason, what is intact and how to go on."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path} ({error.strerror or error}); {then}") from None
    os.replace(tmp, path)


def write_text_atomically(path: Path, text: str, then: str) -> None:
    write_atomically(path, lambda file: file.write(text.encode()), then)
