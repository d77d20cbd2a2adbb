"""MiniImagenet loader on fake trees in both layouts (csv + JPEGs, pickles), and on the real test split where
shared/data holds a copy.

Every fake JPEG is one flat colour: red and green say its class, blue its place in the class, so that a test can read
back the order of classes and images from the loaded tensor.
"""

import csv
import os
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bilevel_cli.data import miniimagenet
from bilevel_cli.data.miniimagenet import load_miniimagenet
from bilevel_cli.errors import UserError

# Written to the csv files out of wnid order, to check that classes come out sorted.
WNIDS = {"train": ["n03", "n01", "n02"], "val": ["n05", "n04", "n06"], "test": ["n09", "n07", "n08"]}
PER_CLASS = 6


def _colour(wnid: str, k: int) -> tuple[int, int, int]:
    number = int(wnid[1:])
    return 25 * number, 250 - 25 * number, 20 + 40 * k


def _write_class(folder: Path, split: str, wnid: str, size=(84, 84)) -> None:
    with open(folder / f"{split}.csv", "a", newline="") as file:
        writer = csv.writer(file)
        for k in range(PER_CLASS):
            name = f"{wnid}{k:08d}.jpg"
            Image.new("RGB", size, _colour(wnid, k)).save(folder / "images" / name, quality=95)
            writer.writerow([name, wnid])


def _write_csv_tree(folder: Path) -> None:
    (folder / "images").mkdir(parents=True)
    for split, wnids in WNIDS.items():
        (folder / f"{split}.csv").write_text("filename,label\n")
        for wnid in wnids:
            _write_class(folder, split, wnid)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("miniimagenet")
    _write_csv_tree(root / "miniimagenet")
    # One image of another size, to be resized on the way in.
    Image.new("RGB", (120, 100), _colour("n02", 3)).save(root / "miniimagenet" / "images" / "n0200000003.jpg")
    return root


@pytest.fixture
def root(pristine, tmp_path):
    shutil.copytree(pristine, tmp_path / "data")
    return tmp_path / "data"


def _assert_classes(images: torch.Tensor, wnids: list[str]) -> None:
    """images holds the fake classes wnids in this order, each image in the order of the csv."""
    assert images.dtype == torch.uint8 and images.shape == (len(wnids), PER_CLASS, 3, 84, 84)
    expected = torch.tensor([[_colour(wnid, k) for k in range(PER_CLASS)] for wnid in wnids], dtype=torch.float32)
    assert (images.float().mean((-2, -1)) - expected).abs().max() < 4


def test_csv_layout_sorted_classes_in_csv_order(root):
    splits = load_miniimagenet(root)
    assert set(splits) == {"train", "val", "test"}
    for split, images in splits.items():
        _assert_classes(images, sorted(WNIDS[split]))


def test_root_may_be_the_miniimagenet_folder(root):
    _assert_classes(load_miniimagenet(root / "miniimagenet")["val"], ["n04", "n05", "n06"])


def test_only_the_requested_splits_are_read(root):
    (root / "miniimagenet" / "train.csv").unlink()
    (root / "miniimagenet" / "val.csv").unlink()
    splits = load_miniimagenet(root, splits=("test",))
    assert list(splits) == ["test"]
    _assert_classes(splits["test"], ["n07", "n08", "n09"])
    assert sorted(p.name for p in (root / "miniimagenet").glob("bilevel-cache-*")) == ["bilevel-cache-test.pt"]


def test_cache_beside_the_csv_is_reused(root, monkeypatch):
    first = load_miniimagenet(root)
    assert all((root / "miniimagenet" / f"bilevel-cache-{split}.pt").is_file() for split in WNIDS)

    def fail(classes):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(miniimagenet, "_decode", fail)
    again = load_miniimagenet(root)
    assert all(torch.equal(first[split], again[split]) for split in first)


def test_stale_cache_is_rebuilt_after_a_class_is_added(root):
    load_miniimagenet(root, splits=("test",))
    _write_class(root / "miniimagenet", "test", "n00")
    _assert_classes(load_miniimagenet(root, splits=("test",))["test"], ["n00", "n07", "n08", "n09"])


def test_cache_dir_is_honoured(root, tmp_path):
    load_miniimagenet(root, splits=("val",), cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache" / "bilevel-cache-val.pt").is_file()
    assert not list((root / "miniimagenet").glob("bilevel-cache-*"))


def _pickle(path: Path, rng: np.random.Generator, wnids: list[str], protocol: int = 4) -> dict:
    """A fake mini-imagenet-cache pickle with shuffled rows; returns what it holds."""
    rows = rng.permutation(len(wnids) * PER_CLASS)
    content = {"image_data": rng.integers(0, 256, (len(rows), 84, 84, 3), dtype=np.uint8),
               "class_dict": {wnid: rows[i::len(wnids)].tolist() for i, wnid in enumerate(wnids)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    return content


def _expected(content: dict) -> torch.Tensor:
    classes = content["class_dict"]
    return torch.stack([torch.from_numpy(content["image_data"][classes[wnid]]).permute(0, 3, 1, 2)
                        for wnid in sorted(classes)])


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("folder", ["miniimagenet", "."])
def test_pickle_layout(tmp_path, protocol, folder):
    rng = np.random.default_rng(protocol)
    written = {split: _pickle(tmp_path / folder / f"mini-imagenet-cache-{split}.pkl", rng, wnids, protocol)
               for split, wnids in WNIDS.items()}
    splits = load_miniimagenet(tmp_path)
    assert all(torch.equal(splits[split], _expected(written[split])) for split in WNIDS)
    assert (tmp_path / folder / "bilevel-cache-train.pt").is_file()


def test_stale_pickle_cache_is_rebuilt(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "miniimagenet" / "mini-imagenet-cache-test.pkl"
    _pickle(path, rng, ["n07", "n08"])
    load_miniimagenet(tmp_path, splits=("test",))
    content = _pickle(path, rng, ["n07", "n08", "n09"])
    assert torch.equal(load_miniimagenet(tmp_path, splits=("test",))["test"], _expected(content))


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_would_run_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "it-ran"
    path = tmp_path / "miniimagenet" / "mini-imagenet-cache-test.pkl"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps({"image_data": _Exploit(marker), "class_dict": {}}))
    message = _error(tmp_path, splits=("test",))
    assert str(path) in message and "system" in message
    assert not marker.exists()


def test_pickle_of_something_else_is_refused(tmp_path):
    path = tmp_path / "mini-imagenet-cache-val.pkl"
    path.write_bytes(pickle.dumps({"images": [1, 2, 3]}))
    assert str(path) in _error(tmp_path, splits=("val",))


def test_truncated_pickle_is_named(tmp_path):
    path = tmp_path / "mini-imagenet-cache-val.pkl"
    _pickle(path, np.random.default_rng(0), ["n04"])
    path.write_bytes(path.read_bytes()[:1000])
    assert str(path) in _error(tmp_path, splits=("val",))


def _error(root, **options) -> str:
    with pytest.raises(UserError) as error:
        load_miniimagenet(root, **options)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_nothing_found_says_where_it_looked(tmp_path):
    message = _error(tmp_path)
    assert message.startswith("MiniImagenet not found")
    assert f"{tmp_path}/miniimagenet/" in message and "mini-imagenet-cache-" in message and "data.root=" in message


def test_missing_images_are_counted_and_named(root):
    for k in (1, 4):
        (root / "miniimagenet" / "images" / f"n08{k:08d}.jpg").unlink()
    message = _error(root, splits=("test",))
    assert "2 images missing" in message and "n0800000001.jpg" in message


def test_corrupt_jpeg_is_named(root):
    jpeg = root / "miniimagenet" / "images" / "n0500000002.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:300])
    assert str(jpeg) in _error(root, splits=("val",))


def test_class_with_another_number_of_images_is_named(root):
    path = root / "miniimagenet" / "train.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(line for line in lines if not line.startswith("n0100000003")))
    message = _error(root, splits=("train",))
    assert "n01" in message and "5 images" in message


# The real test split, unpacked from shared/data where this checkout has it.

@pytest.fixture(scope="session")
def real_root(unpack_shared):
    return unpack_shared("miniimagenet")


def test_real_test_split_decodes_and_caches(real_root, monkeypatch):
    start = time.perf_counter()
    test = load_miniimagenet(real_root, splits=("test",))["test"]
    print(f"MiniImagenet test split decoded in {time.perf_counter() - start:.1f} s")
    assert test.dtype == torch.uint8 and test.shape == (20, 600, 3, 84, 84)
    assert 60 < test.float().mean() < 190  # natural photographs, neither blank nor saturated
    monkeypatch.setattr(miniimagenet, "_decode", lambda classes: pytest.fail("decoded again"))
    start = time.perf_counter()
    again = load_miniimagenet(real_root, splits=("test",))["test"]
    print(f"MiniImagenet test split loaded from its cache in {time.perf_counter() - start:.2f} s")
    assert torch.equal(again, test)
