"""Safe zip extraction: crafted members are refused before anything is written; a plain archive extracts whole."""

import stat
import zipfile

import pytest

from bilevel_cli.data.archive import extract_zip
from bilevel_cli.errors import UserError


def _zip(path, members):
    """A zip at path of (ZipInfo or name, content) members, written as given, unsafe names included."""
    with zipfile.ZipFile(path, "w") as archive:
        for member, content in members:
            archive.writestr(member, content)
    return path


def _symlink(name, pointing_to):
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16  # how Info-ZIP stores a link: its mode, the target as content
    return info, pointing_to


def test_plain_archive_extracts_every_member(tmp_path):
    archive = _zip(tmp_path / "good.zip", [("set/", ""), ("set/alphabet/a.png", b"png"), ("top.txt", "top")])
    written = extract_zip(archive, tmp_path / "out")
    assert (tmp_path / "out" / "set" / "alphabet" / "a.png").read_bytes() == b"png"
    assert (tmp_path / "out" / "top.txt").read_text() == "top"
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == [
        "set", "set/alphabet/a.png", "top.txt"]


@pytest.mark.parametrize("member, problem", [
    (("/tmp/evil.txt", "x"), "an absolute path"),
    (("../evil.txt", "x"), "a '..' component"),
    (("set/../../evil.txt", "x"), "a '..' component"),
    (("..\\evil.txt", "x"), "a '..' component"),
    (("C:/evil.txt", "x"), "an absolute path"),
    (_symlink("set/link", "/etc"), "a symbolic link"),
])
def test_crafted_member_is_refused_and_nothing_is_written(tmp_path, member, problem):
    # A harmless member first: a refused archive must not leave even that behind.
    archive = _zip(tmp_path / "crafted.zip", [("set/first.txt", "first"), member])
    target = tmp_path / "data" / "out"
    with pytest.raises(UserError) as error:
        extract_zip(archive, target)
    name = member[0].filename if isinstance(member[0], zipfile.ZipInfo) else member[0]
    assert f"member {name!r} is {problem}" in str(error.value) and "\n" not in str(error.value)
    assert not target.exists()
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "data" / "evil.txt").exists()


def test_member_through_an_existing_link_is_refused(tmp_path):
    """A link already under the target (left by an earlier extraction) must not carry a member outside."""
    target = tmp_path / "out"
    target.mkdir()
    (target / "escape").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    archive = _zip(tmp_path / "crafted.zip", [("escape/evil.txt", "x")])
    with pytest.raises(UserError, match="'escape/evil.txt' is a path through a link"):
        extract_zip(archive, target)
    assert not (tmp_path / "elsewhere" / "evil.txt").exists()


def test_truncated_archive_says_to_download_it_again(tmp_path):
    archive = _zip(tmp_path / "good.zip", [("a.txt", "a" * 1000)])
    archive.write_bytes(archive.read_bytes()[:50])
    with pytest.raises(UserError, match="is not a complete zip archive .*download it again"):
        extract_zip(archive, tmp_path / "out")
