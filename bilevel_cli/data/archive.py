"""Extraction of the zip archives the tool downloads, refusing any member that would land outside the target folder.

A member named with an absolute path or with `..` components, or stored as a symbolic link (which a later member
could be written through), is how a crafted archive overwrites files elsewhere. Every member is checked before the
first is written, so a refused archive leaves nothing behind; then only folders and regular files are written, by
this module, never by zipfile's own extraction (which rewrites unsafe names silently instead of refusing them).
"""

import os
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from bilevel_cli.errors import UserError


def extract_zip(archive: str | os.PathLike, target: str | os.PathLike) -> list[Path]:
    """Extracts every member of the zip file `archive` under `target`; returns the paths written."""
    archive, target = Path(archive), Path(target)
    try:
        with zipfile.ZipFile(archive) as opened:
            members = opened.infolist()
            destinations = [_destination(archive, target, member) for member in members]
            for member, destination in zip(members, destinations):
                if member.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with opened.open(member) as source, open(destination, "wb") as written:
                    shutil.copyfileobj(source, written)
    except (zipfile.BadZipFile, EOFError) as error:  # not a zip, or one cut short
        raise UserError(f"{archive} is not a complete zip archive ({error}); delete it and download it again") from None
    except OSError as error:
        raise UserError(f"cannot extract {archive} into {target} ({error.strerror or error}); free some space or "
                        "choose a writable data.root") from None
    return destinations


def _destination(archive: Path, target: Path, member: zipfile.ZipInfo) -> Path:
    """Where `member` goes under target, or a UserError naming it when it would go anywhere else."""
    name = member.filename
    # Backslashes count as separators too: a zip made on Windows may use them, and they must not hide a `..`.
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        problem = "an absolute path"
    elif ".." in parts:
        problem = "a '..' component"
    elif stat.S_ISLNK(member.external_attr >> 16):  # the Unix mode sits in the high 16 bits
        problem = "a symbolic link"
    else:
        destination = target.joinpath(*parts)
        if destination.resolve().is_relative_to(target.resolve()):
            return destination
        problem = "a path through a link"  # an existing link under target would redirect it
    raise UserError(f"refusing to extract {archive}: member {name!r} is {problem}, which could write outside "
                    f"{target}; the archive is not the expected one: delete it and download it again from its source")
