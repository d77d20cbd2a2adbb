"""MiniImagenet (Vinyals et al. 2016) with Ravi & Larochelle's 64 / 16 / 20-class split, 600 84×84 RGB images a class.

Two layouts are read, looked for under root/miniimagenet and then under root itself:
- csv: {train,val,test}.csv (header filename,label; the label a wnid) and images/<filename>, 84×84 JPEGs; an image of
  another size is resized to 84×84 with PIL's Lanczos filter.
- pickle: mini-imagenet-cache-{train,val,test}.pkl, each a dict of image_data (N, 84, 84, 3) uint8 and class_dict
  {wnid: [row indices]}. A pickle can run any code while it loads, so only what a numpy array, a dict and lists need
  is let through; anything else is refused before it runs.

Each split is decoded once into bilevel-cache-{split}.pt beside its csv or pickle (or under `cache_dir`), rebuilt
when its sources change. On 2 CPU cores PIL decodes and caches the 60000 real JPEGs in about 10 s (train 6.8 s,
val 1.5 s, test 1.9 s); the cached splits then load in 0.7 / 0.2 / 0.2 s, from files of 813 / 203 / 254 MB.
torchvision.io.decode_image was about twice as fast, but torchvision 0.29 deprecates its image decoders, and the
difference is paid once.
"""

import csv
import os
import pickle
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bilevel_cli.data import cache
from bilevel_cli.errors import UserError

SPLITS = ("train", "val", "test")
SIZE = 84


def load_miniimagenet(root: str | os.PathLike, splits: Sequence[str] = SPLITS,
                      cache_dir: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The requested splits as uint8 (classes, images_per_class, 3, 84, 84), classes in sorted wnid order."""
    root = Path(root)
    sources = {split: _source(root, split) for split in splits}
    missing = [split for split, source in sources.items() if source is None]
    if missing:
        names = ",".join(missing)
        raise UserError(f"MiniImagenet not found: looked for {root}/miniimagenet/{{{names}}}.csv + images/ or "
                        f"mini-imagenet-cache-{{{names}}}.pkl (also directly under {root}); "
                        "set data.root=<dir containing miniimagenet> — see README")
    return {split: _load_split(split, source, cache_dir) for split, source in sources.items()}


def _source(root: Path, split: str) -> Path | None:
    """The split's csv file, else its pickle; the csv first because it is the original release."""
    for folder in (root / "miniimagenet", root):
        for name in (f"{split}.csv", f"mini-imagenet-cache-{split}.pkl"):
            if (folder / name).is_file():
                return folder / name
    return None


def _load_split(split: str, source: Path, cache_dir: str | os.PathLike | None) -> torch.Tensor:
    path = Path(cache_dir or source.parent) / f"bilevel-cache-{split}.pt"
    if source.suffix == ".csv":
        classes = _csv_classes(source)
        files = [file for names in classes.values() for file in names]
        return cache.load_or_build(path, [source, *files], lambda: {"images": _decode(classes)})["images"]
    return cache.load_or_build(path, [source], lambda: {"images": _unpickle(source)})["images"]


def _csv_classes(source: Path) -> dict[str, list[Path]]:
    """{wnid: image paths} in sorted wnid order, each class's images in the csv's order."""
    classes: dict[str, list[Path]] = {}
    with open(source, newline="") as file:
        rows = csv.DictReader(file)
        if rows.fieldnames is None or not {"filename", "label"} <= set(rows.fieldnames):
            raise UserError(f"MiniImagenet {source} does not start with the header filename,label; use the split "
                            "files of Ravi & Larochelle's release")
        for row in rows:
            classes.setdefault(row["label"], []).append(source.parent / "images" / row["filename"])
    # One listing of the folder instead of a stat per image: 60000 stats take a noticeable part of a second.
    images = source.parent / "images"
    present = set(os.listdir(images)) if images.is_dir() else set()
    missing = [file for names in classes.values() for file in names if file.name not in present]
    if missing:
        raise UserError(f"MiniImagenet {source.name} lists {len(missing)} images missing from {images}, "
                        f"e.g. {missing[0].name}; copy the images of your MiniImagenet release there")
    return _same_count({wnid: classes[wnid] for wnid in sorted(classes)}, source)


def _same_count(classes: dict[str, Sequence], source: Path) -> dict[str, Sequence]:
    """classes, checked to hold the same number of images each, as episodes need."""
    counts = {wnid: len(images) for wnid, images in classes.items()}
    usual = Counter(counts.values()).most_common(1)[0][0] if counts else 0
    for wnid, count in counts.items():
        if count != usual:
            raise UserError(f"MiniImagenet {source.name}: class {wnid} has {count} images but the other classes "
                            f"have {usual}; every class of a split needs the same number")
    return classes


def _decode(classes: dict[str, list[Path]]) -> torch.Tensor:
    per_class = len(next(iter(classes.values()), []))
    images = np.empty((len(classes), per_class, SIZE, SIZE, 3), dtype=np.uint8)
    for i, files in enumerate(classes.values()):
        for j, file in enumerate(files):
            try:
                with Image.open(file) as opened:
                    image = opened.convert("RGB")
            except (OSError, SyntaxError, ValueError) as error:  # what PIL raises for truncated or foreign files
                raise UserError(f"MiniImagenet image {file} is corrupt or not an image; replace it from your "
                                "MiniImagenet release") from error
            if image.size != (SIZE, SIZE):
                image = image.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
            images[i, j] = np.asarray(image)
    return _channels_first(images)


def _channels_first(images: np.ndarray) -> torch.Tensor:
    """(classes, per_class, H, W, 3) numpy images as the (classes, per_class, 3, H, W) tensor episodes use."""
    return torch.from_numpy(images).permute(0, 1, 4, 2, 3).contiguous()


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and builtin containers only: any other global a pickle names is refused unloaded."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # how protocol 2 writes bytes

    def __init__(self, file, source: Path):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise UserError(f"MiniImagenet pickle {self.source} wants to load {module}.{name}, which a plain "
                            "image pickle does not need, so it was not loaded; use the csv layout or a trusted pickle")
        return super().find_class(module, name)


def _unpickle(source: Path) -> torch.Tensor:
    with open(source, "rb") as file:
        try:
            content = _ArrayUnpickler(file, source).load()
        except (pickle.UnpicklingError, EOFError) as error:
            raise UserError(f"MiniImagenet pickle {source} is truncated or corrupt; copy it again") from error
    array = content.get("image_data") if isinstance(content, dict) else None
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.shape[1:] != (SIZE, SIZE, 3) \
            or not isinstance(content.get("class_dict"), dict):
        raise UserError(f"MiniImagenet pickle {source} is not a dict of image_data (N, {SIZE}, {SIZE}, 3) uint8 and "
                        "class_dict {wnid: row indices}; use a mini-imagenet-cache pickle or the csv layout")
    classes = _same_count({wnid: content["class_dict"][wnid] for wnid in sorted(content["class_dict"])}, source)
    rows = np.asarray(list(classes.values()), dtype=np.int64)
    return _channels_first(array[rows])
