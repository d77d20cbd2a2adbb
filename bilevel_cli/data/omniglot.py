"""Omniglot (Lake et al. 2015) from torchvision's folder layout, split into few-shot classes as Franceschi et al. did.

The tree: root/omniglot-py/images_{background,evaluation}/<alphabet>/<characterNN>/<id>_<nn>.png, 964 + 659 = 1623
characters of 20 drawings, 105×105 black strokes on white. Each drawing is shrunk to 28×28 with PIL's Lanczos filter
and inverted (bright strokes on 0), then every character's four quarter turns become classes of its split.

Splits:
- "random" (the paper's): the 1623 characters, sorted by set/alphabet/character, shuffled with `seed` and cut
  1200 / 100 / 323 (the same fractions, rounded, for trees of another size): 4800 / 400 / 1292 classes.
- "alphabet" (Vinyals et al.'s, by alphabet): the 964 background characters train; the 20 evaluation alphabets are
  shuffled with `seed` and taken into val until it holds at least a sixth of the evaluation characters, the rest
  test. With seed 0 that is 3 alphabets and 123 characters for val, 17 and 536 for test.

Decoding every PNG takes about 4 s on 2 CPU cores; the decoded (1623, 20, 28, 28) uint8 tensor is cached in one
25 MB file beside the data (or under `cache_dir`), after which a load (listing the tree included) takes about 0.4 s.
"""

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bilevel_cli.data import archive, cache
from bilevel_cli.data.rotations import with_rotations
from bilevel_cli.errors import UserError

SETS = ("images_background", "images_evaluation")
DRAWINGS = 20
SIZE = 28
CACHE_NAME = f"bilevel-cache-{SIZE}px.pt"
_PAPER_SPLIT = (1200, 100, 323)
_URL = "https://github.com/brendenlake/omniglot (folder python/)"


def load_omniglot(root: str | os.PathLike, split: str = "random", seed: int = 0, download: bool = False,
                  cache_dir: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """Omniglot classes (4·characters, 20, 1, 28, 28) uint8 per split: {"train", "val", "test"}."""
    if split not in ("random", "alphabet"):
        raise UserError(f"unknown Omniglot split data.split={split}; choose random (the paper's) or alphabet")
    tree = _tree(Path(root), download)
    characters = _characters(tree)
    sources = [png for _, pngs in characters for png in pngs]
    decoded = cache.load_or_build(Path(cache_dir or tree) / CACHE_NAME, sources, lambda: _decode(characters))
    images, keys = decoded["images"], decoded["keys"]
    parts = _random_split(len(keys), seed) if split == "random" else _alphabet_split(keys, seed)
    # Rotating after the split keeps all four turns of a character in the same split.
    return {name: with_rotations(images[indices].unsqueeze(2)) for name, indices in parts.items()}


def _tree(root: Path, download: bool) -> Path:
    """The omniglot-py folder, downloaded first where asked and missing; root may also be that folder itself."""
    if any((root / name).is_dir() for name in SETS):
        return root
    tree = root / "omniglot-py"
    missing = [name for name in SETS if not (tree / name).is_dir()]
    if len(missing) == len(SETS) and not download:
        raise UserError(f"Omniglot not found: looked for {tree}/images_background and images_evaluation; "
                        "set data.root=<dir containing omniglot-py> or data.download=true")
    if download:
        for name in missing:
            _download(root, name)
    for name in missing:
        if not (tree / name).is_dir():
            raise UserError(f"Omniglot is incomplete: {tree / name} is missing; unzip {name}.zip from {_URL} there "
                            "or set data.download=true")
    return tree


def _download(root: Path, name: str) -> None:
    """Fetches {name}.zip through torchvision, which knows the URL and checksum, and extracts it with archive's
    checks, which refuse a crafted member outright where zipfile's own extraction would quietly rename it."""
    # Imported here: torchvision.datasets takes seconds to import and only this rare path needs it.
    from torchvision.datasets import Omniglot
    from torchvision.datasets.utils import download_url

    tree = root / "omniglot-py"
    try:
        download_url(f"{Omniglot.download_url_prefix}/{name}.zip", str(tree), filename=f"{name}.zip",
                     md5=Omniglot.zips_md5[name])
    except Exception as error:  # whatever went wrong (no network, a bad checksum), the way out is the same
        reason = " ".join(str(error).split())
        raise UserError(f"could not download Omniglot {name} into {tree} ({reason}); get "
                        f"images_background.zip and images_evaluation.zip from {_URL}, unzip both into "
                        f"{tree}") from error
    archive.extract_zip(tree / f"{name}.zip", tree)


def _characters(tree: Path) -> list[tuple[str, list[Path]]]:
    """("set/alphabet/character", its 20 PNG paths) of every character, sorted so that splits are reproducible."""
    characters = []
    for name in SETS:
        found = len(characters)
        for alphabet in _subfolders(tree / name):
            for character in _subfolders(alphabet):
                pngs = sorted(Path(entry.path) for entry in os.scandir(character) if entry.name.endswith(".png"))
                if len(pngs) != DRAWINGS:
                    raise UserError(f"Omniglot character folder {character} holds {len(pngs)} drawings instead of "
                                    f"{DRAWINGS}; restore it from {_URL}")
                characters.append((f"{name}/{alphabet.name}/{character.name}", pngs))
        if len(characters) == found:
            raise UserError(f"Omniglot {tree / name} holds no <alphabet>/<character>/ folders of PNG drawings; unzip "
                            f"{name}.zip from {_URL} there or set data.download=true")
    return characters


def _subfolders(folder: Path) -> list[Path]:
    return sorted(Path(entry.path) for entry in os.scandir(folder) if entry.is_dir())


def _decode(characters: list[tuple[str, list[Path]]]) -> dict:
    images = np.empty((len(characters), DRAWINGS, SIZE, SIZE), dtype=np.uint8)
    for i, (_, pngs) in enumerate(characters):
        for j, png in enumerate(pngs):
            try:
                with Image.open(png) as image:
                    small = image.convert("L").resize((SIZE, SIZE), Image.Resampling.LANCZOS)
            except (OSError, SyntaxError, ValueError) as error:  # what PIL raises for truncated or foreign files
                raise UserError(f"Omniglot drawing {png} is corrupt or not a PNG; restore it from {_URL}") from error
            images[i, j] = 255 - np.asarray(small)
    return {"images": torch.from_numpy(images), "keys": [key for key, _ in characters]}


def _random_split(count: int, seed: int) -> dict[str, torch.Tensor]:
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    n_train, n_val = (round(count * n / sum(_PAPER_SPLIT)) for n in _PAPER_SPLIT[:2])
    return {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}


def _alphabet_split(keys: list[str], seed: int) -> dict[str, torch.Tensor]:
    by_alphabet: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        by_alphabet.setdefault(key.rsplit("/", 1)[0], []).append(i)
    evaluation = [alphabet for alphabet in by_alphabet if alphabet.startswith("images_evaluation/")]
    order = torch.randperm(len(evaluation), generator=torch.Generator().manual_seed(seed)).tolist()
    total = sum(len(by_alphabet[alphabet]) for alphabet in evaluation)
    val, test = [], []
    for k in order:
        (val if 6 * len(val) < total else test).extend(by_alphabet[evaluation[k]])
    train = [i for alphabet, indices in by_alphabet.items() if alphabet.startswith("images_background/")
             for i in indices]
    return {name: torch.tensor(indices, dtype=torch.long) for name, indices in
            (("train", train), ("val", val), ("test", test))}
