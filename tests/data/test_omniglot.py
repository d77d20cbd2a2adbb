"""Omniglot loader on fake trees in torchvision's layout, and on the real data set where shared/data holds a copy.

Every fake drawing encodes its character and drawing number as black cells of a 5×5 grid, so that a test can read
back from the 28×28 result which character a class is and whether its drawings came in order.
"""

import hashlib
import shutil
import time
import urllib.error
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision
import torchvision.datasets.utils
from PIL import Image, ImageDraw

from bilevel_cli.data import omniglot
from bilevel_cli.data.omniglot import load_omniglot
from bilevel_cli.errors import UserError

BACKGROUND = {"Alpha": 4, "Beta": 3, "Gamma": 3}
EVALUATION = {"Delta": 2, "Epsilon": 3, "Zeta": 2, "Eta": 3, "Theta": 2}
CELL = 21  # 105 / 5


def _draw(number: int, drawing: int) -> Image.Image:
    """A 105×105 1-bit drawing, black on white: bits 0-9 the character number, 10-14 the drawing number."""
    code = number | drawing << 10
    image = Image.new("1", (105, 105), 1)
    pen = ImageDraw.Draw(image)
    for bit in range(15):
        if code >> bit & 1:
            row, column = divmod(bit, 5)
            pen.rectangle([column * CELL, row * CELL, column * CELL + CELL - 1, row * CELL + CELL - 1], fill=0)
    return image


def _read(image: torch.Tensor) -> tuple[int, int]:
    """(character number, drawing number) back from a decoded (1, 28, 28) drawing."""
    centres = ((torch.arange(5) + 0.5) * 28 / 5).long()
    bits = (image[0][centres][:, centres].flatten()[:15] > 128).tolist()
    code = sum(bit << i for i, bit in enumerate(bits))
    return code & 1023, code >> 10


def _write_set(tree: Path, name: str, alphabets: dict[str, int], first: int) -> dict[int, str]:
    """Writes one set of the tree; returns {character number: alphabet}, numbered from `first` (never 0: no ink)."""
    numbers = {}
    for alphabet, characters in alphabets.items():
        for c in range(characters):
            folder = tree / name / alphabet / f"character{c + 1:02d}"
            folder.mkdir(parents=True)
            number = first + len(numbers)
            for d in range(20):
                _draw(number, d).save(folder / f"{number:04d}_{d + 1:02d}.png")
            numbers[number] = alphabet
    return numbers


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """A pristine fake tree under root/omniglot-py; tests that change a tree copy it first."""
    root = tmp_path_factory.mktemp("omniglot")
    background = _write_set(root / "omniglot-py", "images_background", BACKGROUND, 1)
    evaluation = _write_set(root / "omniglot-py", "images_evaluation", EVALUATION, 1 + len(background))
    return root, background, evaluation


@pytest.fixture
def root(fake, tmp_path):
    shutil.copytree(fake[0], tmp_path / "data")
    return tmp_path / "data"


def _numbers(images: torch.Tensor) -> list[int]:
    """The character number of each upright class (the first quarter), checking every drawing of it came in order."""
    upright = images[:len(images) // 4]
    numbers = []
    for drawings in upright:
        read = [_read(image) for image in drawings]
        assert [d for _, d in read] == list(range(20))
        assert len({n for n, _ in read}) == 1
        numbers.append(read[0][0])
    return numbers


def test_shapes_and_bright_strokes_on_dark(root, fake):
    splits = load_omniglot(root)
    characters = len(fake[1]) + len(fake[2])
    assert set(splits) == {"train", "val", "test"}
    assert sum(len(images) for images in splits.values()) == 4 * characters
    for images in splits.values():
        assert images.dtype == torch.uint8 and images.device.type == "cpu"
        assert images.shape[1:] == (20, 1, 28, 28)
    upright = torch.cat([images[:len(images) // 4] for images in splits.values()])
    # No drawing inks the two bottom rows of cells, the lowest 2/5 of the image: they must come out dark.
    assert upright.max() == 255 and upright[..., 20:, :].max() < 16
    # Drawing 0 of character 1 inks only the top-left cell: bright there, dark in the cell beside it.
    character = dict(zip(sum((_numbers(images) for images in splits.values()), []), upright))[1]
    assert character[0, 0, 1:4, 1:4].min() > 200 and character[0, 0, 1:4, 7:10].max() < 32


def test_random_split_is_seeded_disjoint_and_complete(root, fake):
    characters = len(fake[1]) + len(fake[2])
    splits = load_omniglot(root, seed=0)
    numbers = {name: _numbers(images) for name, images in splits.items()}
    assert sorted(sum(numbers.values(), [])) == sorted([*fake[1], *fake[2]])
    assert len(numbers["train"]) == round(characters * 1200 / 1623)
    assert len(numbers["val"]) == round(characters * 100 / 1623)
    again = load_omniglot(root, seed=0)
    assert all(torch.equal(again[name], splits[name]) for name in splits)
    assert _numbers(load_omniglot(root, seed=1)["train"]) != numbers["train"]


def test_four_turns_of_each_character_are_classes_of_its_split(root):
    for images in load_omniglot(root).values():
        n = len(images) // 4
        for k in range(1, 4):
            assert torch.equal(images[k * n:(k + 1) * n], torch.rot90(images[:n], k, dims=(-2, -1)))


def test_alphabet_split_keeps_alphabets_whole(root, fake):
    _, background, evaluation = fake
    splits = load_omniglot(root, split="alphabet", seed=0)
    numbers = {name: _numbers(images) for name, images in splits.items()}
    assert sorted(numbers["train"]) == sorted(background)
    val_alphabets = {evaluation[n] for n in numbers["val"]}
    test_alphabets = {evaluation[n] for n in numbers["test"]}
    assert val_alphabets and test_alphabets and not val_alphabets & test_alphabets
    assert sorted(numbers["val"] + numbers["test"]) == sorted(evaluation)
    assert 6 * len(numbers["val"]) >= len(evaluation)  # at least a sixth of the evaluation characters
    other_seeds = [{evaluation[n] for n in _numbers(load_omniglot(root, split="alphabet", seed=s)["val"])}
                   for s in range(1, 6)]
    assert any(alphabets != val_alphabets for alphabets in other_seeds)


def test_root_may_be_the_omniglot_py_folder(root):
    beside, inside = load_omniglot(root), load_omniglot(root / "omniglot-py")
    assert all(torch.equal(beside[name], inside[name]) for name in beside)


def test_cache_beside_the_data_is_reused(root, monkeypatch):
    first = load_omniglot(root)
    assert (root / "omniglot-py" / "bilevel-cache-28px.pt").is_file()

    def fail(characters):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(omniglot, "_decode", fail)
    again = load_omniglot(root)
    assert all(torch.equal(first[name], again[name]) for name in first)


def test_stale_cache_is_rebuilt_after_a_character_is_added(root, fake):
    load_omniglot(root)
    added = _write_set(root / "omniglot-py", "images_evaluation", {"Iota": 1}, 1000)
    splits = load_omniglot(root)
    numbers = sum((_numbers(images) for images in splits.values()), [])
    assert sorted(numbers) == sorted([*fake[1], *fake[2], *added])


def test_cache_dir_is_honoured(root, tmp_path):
    load_omniglot(root, cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache" / "bilevel-cache-28px.pt").is_file()
    assert not (root / "omniglot-py" / "bilevel-cache-28px.pt").exists()


def test_unwritable_cache_location_names_data_cache_dir(root, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the cache folder would go")
    with pytest.raises(UserError, match="data.cache_dir=") as error:
        load_omniglot(root, cache_dir=blocker / "cache")
    assert "\n" not in str(error.value)


def _error(root, **options) -> str:
    with pytest.raises(UserError) as error:
        load_omniglot(root, **options)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_tree_says_where_it_looked_and_what_to_set(tmp_path):
    message = _error(tmp_path)
    assert message.startswith("Omniglot not found")
    assert f"{tmp_path}/omniglot-py/images_background" in message
    assert "data.root=" in message and "data.download=true" in message


def test_missing_set_is_named(root):
    shutil.rmtree(root / "omniglot-py" / "images_evaluation")
    assert str(root / "omniglot-py" / "images_evaluation") in _error(root)


def test_character_without_twenty_drawings_is_named(root):
    folder = root / "omniglot-py" / "images_background" / "Beta" / "character02"
    next(folder.iterdir()).unlink()
    message = _error(root)
    assert str(folder) in message and "19" in message


def test_corrupt_drawing_is_named(root):
    png = root / "omniglot-py" / "images_evaluation" / "Zeta" / "character01" / sorted(
        p.name for p in (root / "omniglot-py" / "images_evaluation" / "Zeta" / "character01").iterdir())[5]
    png.write_bytes(png.read_bytes()[:40])
    assert str(png) in _error(root)


def test_unknown_split_is_refused(root):
    assert "data.split=vinyals" in _error(root, split="vinyals")


def _fake_download(calls: list):
    """Stands in for torchvision's download_url: records its calls and writes the zip of the set it would fetch."""
    def download_url(url, root, filename=None, md5=None):
        calls.append((url, root, filename))
        name = Path(filename).stem
        alphabets, first = (BACKGROUND, 1) if name == "images_background" else (EVALUATION, 100)
        staging = Path(root) / "staging"
        _write_set(staging, name, alphabets, first)
        with zipfile.ZipFile(Path(root) / filename, "w") as archive:
            for file in sorted(staging.rglob("*")):
                archive.write(file, file.relative_to(staging).as_posix())
        shutil.rmtree(staging)
    return download_url


def test_download_fetches_and_extracts_both_sets_into_root(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", _fake_download(calls))
    splits = load_omniglot(tmp_path, download=True)
    tree = str(tmp_path / "omniglot-py")
    assert sorted(calls) == [
        (f"{torchvision.datasets.Omniglot.download_url_prefix}/{name}.zip", tree, f"{name}.zip")
        for name in ("images_background", "images_evaluation")]
    assert sum(len(images) for images in splits.values()) == 4 * (sum(BACKGROUND.values()) + sum(EVALUATION.values()))
    load_omniglot(tmp_path, download=True)  # nothing missing now: no second download
    assert len(calls) == 2


def test_downloaded_zip_with_a_member_outside_the_tree_is_refused(tmp_path, monkeypatch):
    def crafted(url, root, filename=None, md5=None):
        Path(root).mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(Path(root) / filename, "w") as archive:
            archive.writestr("../../evil.txt", "written outside the data folder")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", crafted)
    message = _error(tmp_path, download=True)
    assert message.startswith("refusing to extract") and "'../../evil.txt'" in message
    assert not (tmp_path.parent / "evil.txt").exists()


def test_failed_download_says_how_to_get_the_data(tmp_path, monkeypatch):
    def offline(url, root, filename=None, md5=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", offline)
    message = _error(tmp_path, download=True)
    assert str(tmp_path / "omniglot-py") in message
    assert "github.com/brendenlake/omniglot" in message and "images_background.zip" in message


def test_set_without_character_folders_is_named(root):
    shutil.rmtree(root / "omniglot-py" / "images_background")
    (root / "omniglot-py" / "images_background").mkdir()
    message = _error(root)
    assert str(root / "omniglot-py" / "images_background") in message and "no <alphabet>/<character>/" in message


# The real data set, unpacked from shared/data where this checkout has it.

@pytest.fixture(scope="session")
def real_root(unpack_shared):
    return unpack_shared("omniglot")


@pytest.fixture(scope="session")
def real(real_root):
    start = time.perf_counter()
    splits = load_omniglot(real_root)
    print(f"Omniglot decoded and split in {time.perf_counter() - start:.1f} s")
    return splits


def test_real_shapes_follow_the_paper(real):
    assert {name: tuple(images.shape) for name, images in real.items()} == {
        "train": (4800, 20, 1, 28, 28), "val": (400, 20, 1, 28, 28), "test": (1292, 20, 1, 28, 28)}
    train = real["train"]
    assert train.max() == 255 and train.float().mean() < 64  # strokes bright on a dark background
    # Twenty drawings of a character by different people: no two alike.
    assert len({hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in train[0]}) == 20


def test_real_second_load_reads_the_cache(real, real_root, monkeypatch):
    monkeypatch.setattr(omniglot, "_decode", lambda characters: pytest.fail("decoded again"))
    start = time.perf_counter()
    again = load_omniglot(real_root)
    print(f"Omniglot loaded from its cache in {time.perf_counter() - start:.2f} s")
    assert all(torch.equal(again[name], real[name]) for name in real)


def test_real_alphabet_split(real, real_root):
    splits = load_omniglot(real_root, split="alphabet")
    assert len(splits["train"]) == 4 * 964
    assert len(splits["val"]) + len(splits["test"]) == 4 * 659
    assert 4 * 659 / 6 <= len(splits["val"]) < 4 * 659 / 3
