"""The decoded-image cache helpers shared by the data loaders."""

import os

import pytest
import torch

from bilevel_cli.data import cache
from bilevel_cli.errors import UserError


def test_save_then_load_round_trips(tmp_path):
    obj = {"images": torch.arange(12, dtype=torch.uint8).reshape(3, 4), "keys": ["a/b", "c/d"], "fingerprint": (2, 9)}
    path = tmp_path / "new" / "folder" / "cache.pt"
    cache.save(obj, path)
    loaded = cache.load(path)
    assert torch.equal(loaded["images"], obj["images"])
    assert loaded["keys"] == obj["keys"] and loaded["fingerprint"] == (2, 9)
    assert [p.name for p in path.parent.iterdir()] == ["cache.pt"]


def test_load_of_a_missing_or_corrupt_file_is_none(tmp_path):
    assert cache.load(tmp_path / "missing.pt") is None
    corrupt = tmp_path / "corrupt.pt"
    cache.save({"x": torch.zeros(1000)}, corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:500])
    assert cache.load(corrupt) is None


def test_failed_save_leaves_the_old_cache_and_no_temporary_file(tmp_path):
    path = tmp_path / "cache.pt"
    cache.save({"x": torch.ones(3)}, path)
    with pytest.raises(Exception):
        cache.save({"x": lambda: None}, path)  # a lambda cannot be pickled: the write fails half-way
    assert torch.equal(cache.load(path)["x"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["cache.pt"]


def test_saved_cache_is_readable_by_others_under_a_common_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        cache.save({"x": torch.ones(1)}, tmp_path / "cache.pt")
    finally:
        os.umask(previous)
    assert (tmp_path / "cache.pt").stat().st_mode & 0o044 == 0o044


def test_fingerprint_changes_with_an_added_or_grown_file(tmp_path):
    files = [tmp_path / f"{i}.png" for i in range(3)]
    for file in files:
        file.write_bytes(b"12345")
    before = cache.fingerprint(files[:2])
    assert before == cache.fingerprint(files[:2])
    assert cache.fingerprint(files) != before
    files[1].write_bytes(b"123456")
    assert cache.fingerprint(files[:2]) != before


def test_load_or_build_builds_once_and_again_when_the_sources_change(tmp_path):
    source = tmp_path / "source.png"
    source.write_bytes(b"first")
    builds = []

    def build():
        builds.append(source.read_bytes())
        return {"value": torch.tensor(len(builds))}

    path = tmp_path / "cache.pt"
    assert cache.load_or_build(path, [source], build)["value"] == 1
    assert cache.load_or_build(path, [source], build)["value"] == 1
    source.write_bytes(b"second, longer")
    assert cache.load_or_build(path, [source], build)["value"] == 2
    assert cache.load(path)["value"] == 2
    assert builds == [b"first", b"second, longer"]


def test_unwritable_cache_location_is_a_user_error_naming_the_fix(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the cache folder would go")
    with pytest.raises(UserError) as error:
        cache.load_or_build(blocker / "cache.pt", [], lambda: {"value": torch.zeros(1)})
    message = str(error.value)
    assert "data.cache_dir=" in message and str(blocker / "cache.pt") in message and "\n" not in message
