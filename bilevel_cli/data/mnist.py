"""MNIST (LeCun et al. 1998) in torchvision's layout: root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.

Each of the four files may be plain or gzip-compressed with a .gz suffix; the plain one is read where both exist, since
it needs no decompressing (torchvision's download leaves both). The IDX format is parsed here rather than through
torchvision.datasets.MNIST, which takes seconds to import and tells a truncated file apart from a missing one only by
a checksum that fails for any other MNIST-like data set of the same layout.

The 60000 training images come first, in file order, then the 10000 test images: tasks take fixed slices of this order
(the first 20000 for data hyper-cleaning, say), so it must be the files' own. Decompressing and decoding all four real
files takes about 0.3 s, so there is no cache.
"""

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from bilevel_cli.errors import UserError

IMAGES, LABELS = 0x00000803, 0x00000801  # IDX magic: 0x08 (unsigned byte), then the number of dimensions
SPLITS = (("train", "train"), ("t10k", "test"))
FILES = tuple(f"{prefix}-{kind}" for prefix, _ in SPLITS for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"))
_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"


def load_mnist(root: str | os.PathLike, download: bool = False) -> dict[str, torch.Tensor]:
    """{"images": uint8 (n, 1, rows, cols), "labels": int64 (n,)}: training images first, then test, in file order."""
    root = Path(root)
    folder = _folder(root)
    if download and _missing(folder):
        folder = _download(root)
    missing = _missing(folder)
    if missing:
        names = ", ".join(f"{name}[.gz]" for name in missing)
        raise UserError(f"MNIST not found: {folder} lacks {names}; set data.download=true when online, or put the "
                        f"four files {', '.join(FILES)} (optionally .gz) in {folder}")
    images, labels = [], []
    for prefix, split in SPLITS:
        image_file = _path(folder, f"{prefix}-images-idx3-ubyte")
        label_file = _path(folder, f"{prefix}-labels-idx1-ubyte")
        split_images, split_labels = _parse(image_file, IMAGES), _parse(label_file, LABELS)
        if len(split_images) != len(split_labels):
            raise UserError(f"MNIST {split} files disagree: {image_file} holds {len(split_images)} images but "
                            f"{label_file} {len(split_labels)} labels; re-download both (data.download=true)")
        if images and split_images.shape[1:] != images[0].shape[1:]:
            raise UserError(f"MNIST {image_file} holds {'×'.join(map(str, split_images.shape[1:]))} images but the "
                            f"training file {'×'.join(map(str, images[0].shape[1:]))}; re-download it "
                            "(data.download=true)")
        images.append(split_images)
        labels.append(split_labels)
    # np.concatenate copies into one writable array, which torch.from_numpy can share without a warning.
    return {"images": torch.from_numpy(np.concatenate(images)[:, None]),
            "labels": torch.from_numpy(np.concatenate(labels).astype(np.int64))}


def _folder(root: Path) -> Path:
    """root/MNIST/raw, or root itself where it holds MNIST files directly (a flat copy of the four files)."""
    if any(_path(root, name) is not None for name in FILES):
        return root
    return root / "MNIST" / "raw"


def _path(folder: Path, name: str) -> Path | None:
    """The plain file, else the .gz one, else None."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _missing(folder: Path) -> list[str]:
    return [name for name in FILES if _path(folder, name) is None]


def _download(root: Path) -> Path:
    """Fetches the four files into root/MNIST/raw through torchvision, which knows the mirrors and checksums."""
    # Imported here: torchvision.datasets takes seconds to import and only this rare path needs it.
    from torchvision.datasets import MNIST

    folder = root / "MNIST" / "raw"
    try:
        MNIST(str(root), train=True, download=True)  # one call fetches all four files, test ones included
    except Exception as error:  # whatever went wrong (no network, a bad checksum), the way out is the same
        reason = " ".join(str(error).split())
        raise UserError(f"could not download MNIST into {folder} ({reason}); get {', '.join(FILES)} (optionally "
                        f".gz) from {_URL} and put them in {folder}") from error
    return folder


def _parse(path: Path, magic: int) -> np.ndarray:
    """The IDX file's array: big-endian magic, one big-endian uint32 per dimension, then exactly that many bytes."""
    data = _read(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim

    def corrupt(problem: str) -> UserError:
        return UserError(f"MNIST file {path} is corrupt ({problem}); delete it and re-download it "
                         f"(data.download=true) or copy it again from {_URL}")

    if len(data) < header:
        raise corrupt(f"{len(data)} bytes, shorter than its {header}-byte header")
    found = struct.unpack_from(">I", data)[0]
    if found != magic:
        raise corrupt(f"magic number 0x{found:08X} instead of 0x{magic:08X}")
    shape = struct.unpack_from(f">{ndim}I", data, 4)
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        raise corrupt(f"{len(data)} bytes where its header {'×'.join(map(str, shape))} needs {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _read(path: Path) -> bytes:
    try:
        if path.suffix != ".gz":
            return path.read_bytes()
        with gzip.open(path, "rb") as file:
            return file.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:  # not gzip at all, or a gzip stream cut short
        raise UserError(f"MNIST file {path} is corrupt ({' '.join(str(error).split()) or 'truncated'}); delete it "
                        f"and re-download it (data.download=true) or copy it again from {_URL}") from error
    except OSError as error:
        raise UserError(f"cannot read MNIST file {path} ({error.strerror or error}); check its permissions") from error
