"""MNIST loader on fake IDX files in torchvision's layout, and on the real data set where shared/data holds a copy.

The fake images are random bytes and the labels arbitrary numbers, each split's different, so that a test can tell
whether every image and label came back in its file's order and with the training split first.
"""

import gzip
import shutil
import struct
import time
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from bilevel_cli.data.mnist import load_mnist
from bilevel_cli.errors import UserError

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx(array: np.ndarray) -> bytes:
    """array (uint8, 1 or 3 dimensions) as an IDX file: magic 0x0000080N, big-endian dimensions, then the bytes."""
    return struct.pack(f">I{array.ndim}I", 0x800 | array.ndim, *array.shape) + array.astype(np.uint8).tobytes()


def _data(train: int = 7, test: int = 3, rows: int = 28, cols: int = 28, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"train-images-idx3-ubyte": rng.integers(0, 256, (train, rows, cols), dtype=np.uint8),
            "train-labels-idx1-ubyte": rng.integers(0, 10, train, dtype=np.uint8),
            "t10k-images-idx3-ubyte": rng.integers(0, 256, (test, rows, cols), dtype=np.uint8),
            "t10k-labels-idx1-ubyte": rng.integers(0, 10, test, dtype=np.uint8)}


def _write(folder: Path, data: dict[str, np.ndarray], gz: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in data.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(_idx(array)))
        else:
            (folder / name).write_bytes(_idx(array))
    return folder


def _assert_loaded(loaded: dict[str, torch.Tensor], data: dict[str, np.ndarray]) -> None:
    images = np.concatenate([data["train-images-idx3-ubyte"], data["t10k-images-idx3-ubyte"]])
    labels = np.concatenate([data["train-labels-idx1-ubyte"], data["t10k-labels-idx1-ubyte"]])
    assert set(loaded) == {"images", "labels"}
    assert loaded["images"].dtype == torch.uint8 and loaded["labels"].dtype == torch.int64
    assert tuple(loaded["images"].shape) == (len(images), 1, *images.shape[1:])
    assert torch.equal(loaded["images"][:, 0], torch.from_numpy(images))
    assert loaded["labels"].tolist() == labels.tolist()


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_round_trip_training_images_first_in_file_order(tmp_path, gz):
    data = _data()
    _write(tmp_path / "MNIST" / "raw", data, gz=gz)
    _assert_loaded(load_mnist(tmp_path), data)


def test_shape_comes_from_the_headers(tmp_path):
    data = _data(train=4, test=2, rows=5, cols=6)  # not square: rows and columns must not be swapped
    _write(tmp_path / "MNIST" / "raw", data)
    loaded = load_mnist(str(tmp_path))
    assert tuple(loaded["images"].shape) == (6, 1, 5, 6)
    _assert_loaded(loaded, data)


def test_plain_file_is_preferred_over_gz(tmp_path):
    plain, compressed = _data(seed=1), _data(seed=2)
    raw = _write(tmp_path / "MNIST" / "raw", compressed, gz=True)
    _write(raw, plain)
    _assert_loaded(load_mnist(tmp_path), plain)


def test_plain_and_gz_files_may_be_mixed(tmp_path):
    data = _data()
    raw = tmp_path / "MNIST" / "raw"
    _write(raw, {name: data[name] for name in NAMES[::2]})
    _write(raw, {name: data[name] for name in NAMES[1::2]}, gz=True)
    _assert_loaded(load_mnist(tmp_path), data)


def test_root_may_hold_the_files_directly(tmp_path):
    data = _data()
    _write(tmp_path, data, gz=True)
    _assert_loaded(load_mnist(tmp_path), data)


def test_loading_warns_nothing(tmp_path):
    # torch.from_numpy warns on a read-only numpy buffer, as np.frombuffer's over the file's bytes would be.
    _write(tmp_path / "MNIST" / "raw", _data(), gz=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_mnist(tmp_path)


def _error(root, **options) -> str:
    with pytest.raises(UserError) as error:
        load_mnist(root, **options)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_empty_root_says_where_it_looked_and_what_to_do(tmp_path):
    message = _error(tmp_path)
    assert message.startswith("MNIST not found")
    assert str(tmp_path / "MNIST" / "raw") in message
    assert all(name in message for name in NAMES)
    assert "data.download=true" in message and ".gz" in message


@pytest.mark.parametrize("name", NAMES)
def test_missing_file_is_named(tmp_path, name):
    raw = _write(tmp_path / "MNIST" / "raw", _data(), gz=True)
    (raw / f"{name}.gz").unlink()
    message = _error(tmp_path)
    assert str(raw) in message and "data.download=true" in message
    assert f"lacks {name}[.gz];" in message  # the one missing file, not the other three


def _corrupt_error(tmp_path, name: str, change, gz: bool = False) -> str:
    """The message for the fake tree with `name` replaced by change(its bytes); checks it names the file."""
    raw = _write(tmp_path / "MNIST" / "raw", _data(), gz=gz)
    path = raw / (f"{name}.gz" if gz else name)
    path.write_bytes(change(path.read_bytes()))
    message = _error(tmp_path)
    assert str(path) in message and "re-download" in message
    return message


def test_wrong_magic_is_named(tmp_path):
    # An image file where the labels belong: both are valid IDX, only the magic number tells them apart.
    message = _corrupt_error(tmp_path, "train-labels-idx1-ubyte", lambda data: _idx(np.zeros((7, 28, 28))))
    assert "0x00000803" in message and "0x00000801" in message


@pytest.mark.parametrize("name", NAMES)
def test_truncated_plain_file_is_named(tmp_path, name):
    assert "bytes where its header" in _corrupt_error(tmp_path, name, lambda data: data[:-1])


def test_file_longer_than_its_header_says_is_named(tmp_path):
    _corrupt_error(tmp_path, "t10k-images-idx3-ubyte", lambda data: data + b"\0")


def test_file_shorter_than_its_header_is_named(tmp_path):
    assert "header" in _corrupt_error(tmp_path, "train-images-idx3-ubyte", lambda data: data[:10])


def test_truncated_gz_file_is_named(tmp_path):
    _corrupt_error(tmp_path, "train-images-idx3-ubyte", lambda data: data[:len(data) // 2], gz=True)


def test_gz_file_that_is_not_gzip_is_named(tmp_path):
    _corrupt_error(tmp_path, "t10k-labels-idx1-ubyte", gzip.decompress, gz=True)


def test_image_and_label_counts_must_match(tmp_path):
    data = _data()
    data["t10k-labels-idx1-ubyte"] = data["t10k-labels-idx1-ubyte"][:2]
    raw = _write(tmp_path / "MNIST" / "raw", data)
    message = _error(tmp_path)
    assert str(raw / "t10k-images-idx3-ubyte") in message and str(raw / "t10k-labels-idx1-ubyte") in message
    assert "3 images" in message and "2 labels" in message


def test_training_and_test_image_sizes_must_match(tmp_path):
    data = _data()
    data["t10k-images-idx3-ubyte"] = np.zeros((3, 32, 32), dtype=np.uint8)
    raw = _write(tmp_path / "MNIST" / "raw", data)
    message = _error(tmp_path)
    assert str(raw / "t10k-images-idx3-ubyte") in message and "32×32" in message and "28×28" in message


class _FakeTorchvisionMNIST:
    """Stands in for torchvision.datasets.MNIST: records its calls and writes what its download would."""
    calls = []
    data = _data(seed=3)

    def __init__(self, root, train=True, download=False):
        self.calls.append((root, train, download))
        raw = Path(root) / "MNIST" / "raw"
        _write(raw, self.data, gz=True)
        _write(raw, self.data)


def test_download_fetches_missing_files_into_root(tmp_path, monkeypatch):
    _FakeTorchvisionMNIST.calls = []
    monkeypatch.setattr(torchvision.datasets, "MNIST", _FakeTorchvisionMNIST)
    _assert_loaded(load_mnist(tmp_path, download=True), _FakeTorchvisionMNIST.data)
    assert _FakeTorchvisionMNIST.calls == [(str(tmp_path), True, True)]
    load_mnist(tmp_path, download=True)  # nothing missing now: no second download
    assert len(_FakeTorchvisionMNIST.calls) == 1


def test_download_is_skipped_when_files_are_there(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "MNIST", lambda *args, **kwargs: pytest.fail("downloaded"))
    data = _data()
    _write(tmp_path / "MNIST" / "raw", data, gz=True)
    _assert_loaded(load_mnist(tmp_path, download=True), data)


def test_failed_download_says_how_to_get_the_files(tmp_path, monkeypatch):
    def offline(root, train=True, download=False):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://..., got:\n<urlopen error>")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    message = _error(tmp_path, download=True)
    assert message.startswith("could not download MNIST")
    assert str(tmp_path / "MNIST" / "raw") in message and "Error downloading" in message
    assert all(name in message for name in NAMES) and "https://" in message


def test_download_that_leaves_files_missing_names_them(tmp_path, monkeypatch):
    def partial(root, train=True, download=False):
        _write(Path(root) / "MNIST" / "raw", {name: array for name, array in _data().items() if "t10k" not in name})

    monkeypatch.setattr(torchvision.datasets, "MNIST", partial)
    message = _error(tmp_path, download=True)
    assert "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz];" in message


def test_unreachable_network_error_is_one_line(tmp_path, monkeypatch):
    def offline(root, train=True, download=False):
        raise urllib.error.URLError("[Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    assert "Temporary failure in name resolution" in _error(tmp_path, download=True)


# The real data set, unpacked from shared/data where this checkout has it.

@pytest.fixture(scope="session")
def real_root(unpack_shared):
    return unpack_shared("mnist")


@pytest.fixture(scope="session")
def real(real_root):
    start = time.perf_counter()
    loaded = load_mnist(real_root)
    print(f"MNIST decompressed and decoded in {time.perf_counter() - start:.2f} s")
    return loaded


def test_real_shapes_labels_and_order(real):
    images, labels = real["images"], real["labels"]
    assert tuple(images.shape) == (70000, 1, 28, 28) and images.dtype == torch.uint8
    assert tuple(labels.shape) == (70000,) and labels.dtype == torch.int64
    assert images.max() == 255 and images.min() == 0
    # The well-known first labels of the training file, then of the test file right after the 60000 training ones.
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert labels[60000:60010].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    counts = torch.bincount(labels, minlength=10)
    assert len(counts) == 10 and counts.min() > 6000 and counts.max() < 8000  # 6313 fives to 7877 ones


def test_real_plain_files_match_the_gz_ones_and_torchvision(real, real_root, tmp_path):
    plain = tmp_path / "MNIST" / "raw"
    plain.mkdir(parents=True)
    for gz in (real_root / "MNIST" / "raw").glob("*.gz"):
        with gzip.open(gz) as source, open(plain / gz.stem, "wb") as target:
            shutil.copyfileobj(source, target)
    again = load_mnist(tmp_path)
    assert torch.equal(again["images"], real["images"]) and torch.equal(again["labels"], real["labels"])
    # torchvision's own IDX reader, on the same plain files, as an independent check of the parser.
    from torchvision.datasets.mnist import read_image_file, read_label_file

    assert torch.equal(read_image_file(str(plain / "train-images-idx3-ubyte")), real["images"][:60000, 0])
    assert torch.equal(read_label_file(str(plain / "t10k-labels-idx1-ubyte")), real["labels"][60000:])
