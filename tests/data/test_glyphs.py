"""The embedded glyphs data set and the rotation classes it shares with Omniglot.

One render of every character took about 2 s on 2 idle CPU cores; this file renders three times (seeds 0, 0, 1).
"""

import hashlib

import pytest
import torch

from bilevel_cli.data import glyphs
from bilevel_cli.data.glyphs import load_glyphs
from bilevel_cli.data.rotations import with_rotations


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def splits(root):
    return load_glyphs(root, seed=0)


def _upright(images: torch.Tensor) -> torch.Tensor:
    """The 0° classes of a split, the first quarter of its classes."""
    return images[:len(images) // 4]


def _hashes(images: torch.Tensor) -> set[str]:
    return {hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in images.flatten(0, 1)}


def test_shapes_and_split_sizes(splits):
    assert set(splits) == {"train", "val", "test"}
    for images in splits.values():
        assert images.dtype == torch.uint8
        assert images.shape[1:] == (20, 1, 28, 28)
        assert len(images) % 4 == 0
    characters = sum(len(images) for images in splits.values()) // 4
    # Around a thousand distinct shapes survive; far fewer or more means the filter or the deduplication broke.
    assert 800 <= characters <= 1300
    assert len(splits["train"]) // 4 == round(characters * 1200 / 1623)
    assert len(splits["val"]) // 4 == round(characters * 100 / 1623)


def test_bright_strokes_on_dark_inside_the_frame(splits):
    images = splits["train"]
    assert images.min() == 0 and images.max() == 255
    assert images.float().mean() < 64
    # Ink may reach the outermost pixels only through anti-aliasing: no stroke is cut off by the frame.
    edges = torch.cat([images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], -1)
    assert edges.max() <= 128


def test_rotated_classes_follow_the_upright_ones(splits):
    images = splits["val"]
    n = len(images) // 4
    for k in range(1, 4):
        assert torch.equal(images[k * n:(k + 1) * n], torch.rot90(images[:n], k, dims=(-2, -1)))


def test_same_seed_same_bytes_other_seed_other_data(splits, tmp_path):
    again = load_glyphs(tmp_path / "again", seed=0)
    assert all(torch.equal(again[name], splits[name]) for name in splits)
    other = load_glyphs(tmp_path / "other", seed=1)
    assert not torch.equal(other["train"], splits["train"])


def test_no_image_or_rotation_of_one_in_two_splits(splits):
    # Were rotations added before splitting, a quarter turn of a train image would turn up in val or test.
    seen = {name: _hashes(torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)]))
            for name, images in splits.items()}
    assert not seen["train"] & seen["val"]
    assert not seen["train"] & seen["test"]
    assert not seen["val"] & seen["test"]


def test_drawers_differ_but_resemble_their_own_character(splits):
    images = _upright(splits["train"])[:64].flatten(2).float() / 255  # (classes, drawers, pixels)
    assert all(len(_hashes(drawers[None])) == 20 for drawers in images)
    classes, drawers = images.shape[:2]
    within = torch.cdist(images, images).sum() / (classes * drawers * (drawers - 1))  # the zero diagonal left out
    between = torch.cdist(images, images.roll(1, dims=0)).mean()
    assert within < between
    # Most drawings lie nearest to the mean drawing of their own character, out of 64 characters.
    nearest = torch.cdist(images.flatten(0, 1), images.mean(1)).argmin(1)
    assert (nearest == torch.arange(classes).repeat_interleave(drawers)).float().mean() > 0.75


def test_second_load_reads_the_cache(splits, root, monkeypatch):
    def fail(seed):
        raise AssertionError("rendered again instead of reading the cache")

    monkeypatch.setattr(glyphs, "_render_splits", fail)
    cached = load_glyphs(root, seed=0)
    assert all(torch.equal(cached[name], splits[name]) for name in splits)


def test_corrupt_cache_is_rendered_again(tmp_path, monkeypatch):
    path = tmp_path / "glyphs" / "glyphs-v1-seed3.pt"
    path.parent.mkdir()
    path.write_bytes(b"not a torch file")
    fresh = {name: torch.full((4, 20, 1, 28, 28), i, dtype=torch.uint8)
             for i, name in enumerate(["train", "val", "test"])}
    monkeypatch.setattr(glyphs, "_render_splits", lambda seed: fresh)
    loaded = load_glyphs(tmp_path, seed=3)
    assert all(torch.equal(loaded[name], fresh[name]) for name in fresh)
    saved = torch.load(path, weights_only=True)
    assert all(torch.equal(saved[name], fresh[name]) for name in fresh)
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_with_rotations_adds_each_quarter_turn_as_classes():
    images = torch.randint(0, 256, (3, 2, 1, 5, 5), dtype=torch.uint8)
    rotated = with_rotations(images)
    assert rotated.shape == (12, 2, 1, 5, 5)
    assert torch.equal(rotated[:3], images)
    for k in range(3):
        assert torch.equal(rotated[3 + k], torch.rot90(images[k], 1, dims=(-2, -1)))
        assert torch.equal(rotated[6 + k], images[k].flip(-1).flip(-2))
        assert torch.equal(rotated[9 + k], torch.rot90(rotated[6 + k], 1, dims=(-2, -1)))
