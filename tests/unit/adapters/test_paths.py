"""Adapter paths from the load API are confined to allowed directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeinfer.adapters.paths import MAX_PATH_CHARS, confine
from edgeinfer.auth import PermissionDenied
from edgeinfer.errors import InvalidInput


def test_paths_inside_an_allowed_directory_resolve(tmp_path: Path) -> None:
    allowed = tmp_path / "adapters"
    (allowed / "sub").mkdir(parents=True)
    (allowed / "sub" / "a.gguf").write_bytes(b"x")
    assert (
        confine(str(allowed / "sub" / ".." / "sub" / "a.gguf"), [allowed])
        == (allowed / "sub" / "a.gguf").resolve()
    )


@pytest.mark.parametrize("path", ["/etc/passwd", "/etc/does-not-exist", "/"])
def test_paths_outside_are_refused_without_saying_whether_they_exist(
    tmp_path: Path, path: str
) -> None:
    with pytest.raises(PermissionDenied, match="outside the directories"):
        confine(path, [tmp_path])


def test_symlinks_are_resolved_before_the_check(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "link").symlink_to("/etc/passwd")
    (allowed / "dots").symlink_to(tmp_path)
    with pytest.raises(PermissionDenied):
        confine(str(allowed / "link"), [allowed])
    with pytest.raises(PermissionDenied):
        confine(str(allowed / "dots"), [allowed])


def test_bad_paths_are_400s_naming_the_problem(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="characters long"):
        confine("/" + "a" * 100_000, [tmp_path])
    with pytest.raises(InvalidInput, match="absolute"):
        confine("relative/adapter.gguf", [tmp_path])
    with pytest.raises(InvalidInput, match="absolute"):
        confine(str(tmp_path) + "/a\0b", [tmp_path])
    with pytest.raises(InvalidInput, match="No such file"):
        confine(str(tmp_path / "missing.gguf"), [tmp_path])
    with pytest.raises(InvalidInput):  # a component longer than NAME_MAX
        confine(str(tmp_path / ("n" * 300)), [tmp_path])
    assert MAX_PATH_CHARS == 4096


def test_a_missing_root_allows_nothing(tmp_path: Path) -> None:
    with pytest.raises(PermissionDenied):
        confine(str(tmp_path), [tmp_path / "gone"])
