from pathlib import Path

import pytest

from edgeinfer.errors import RepositoryError
from edgeinfer.repository import MANIFEST_NAME, Repository, add_version, verify_manifest


def _src(tmp_path: Path, name: str, content: bytes) -> Path:
    p = tmp_path / "src" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(content)
    return p


def test_add_version_numbers_and_verifies(tmp_path: Path) -> None:
    model_dir = tmp_path / "repo" / "m"
    v1 = add_version(model_dir, {"model.onnx": _src(tmp_path, "a", b"one")})
    v2 = add_version(model_dir, {"model.onnx": _src(tmp_path, "b", b"two")})
    assert (v1.name, v2.name) == ("1", "2")
    v5 = add_version(model_dir, {"model.onnx": _src(tmp_path, "c", b"five")}, version=5)
    assert v5.name == "5"
    assert add_version(model_dir, {"model.onnx": _src(tmp_path, "d", b"six")}).name == "6"
    for v in (v1, v2, v5):
        verify_manifest(v)
    # No temp directories are left behind.
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2", "5", "6"]


def test_existing_version_is_refused(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    add_version(model_dir, {"model.onnx": _src(tmp_path, "a", b"x")}, version=1)
    with pytest.raises(RepositoryError, match="already exists"):
        add_version(model_dir, {"model.onnx": _src(tmp_path, "a", b"x")}, version=1)


def test_missing_source_leaves_nothing(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    with pytest.raises(RepositoryError, match="no such file"):
        add_version(model_dir, {"model.onnx": tmp_path / "nope"})
    assert list(model_dir.iterdir()) == []


def test_corruption_is_detected(tmp_path: Path) -> None:
    v = add_version(tmp_path / "m", {"model.onnx": _src(tmp_path, "a", b"payload")})
    (v / "model.onnx").write_bytes(b"payloaX")
    with pytest.raises(RepositoryError, match=r"checksum mismatch for model\.onnx"):
        verify_manifest(v)
    (v / "model.onnx").unlink()
    with pytest.raises(RepositoryError, match="missing"):
        verify_manifest(v)


@pytest.mark.parametrize(("content", "needle"), [
    (None, "not published"),
    ("{not json", "malformed"),
    ('{"files": [1]}', "malformed"),
    ('{"files": {"../../etc/passwd": "00"}}', "outside the version"),
])  # fmt: skip
def test_bad_manifests(tmp_path: Path, content: str | None, needle: str) -> None:
    v = tmp_path / "m" / "1"
    v.mkdir(parents=True)
    if content is not None:
        (v / MANIFEST_NAME).write_text(content)
    with pytest.raises(RepositoryError, match=needle):
        verify_manifest(v)


def test_repository_scan(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    add_version(root / "a", {"model.onnx": _src(tmp_path, "a", b"1")})
    add_version(root / "a", {"model.onnx": _src(tmp_path, "a", b"2")})
    (root / "a" / "config.toml").write_text("[version_policy]\nlatest = 1\n")
    (root / "no-config").mkdir()
    (root / ".hidden").mkdir()
    repo = Repository(root)
    assert repo.model_names() == ["a"]
    entry = repo.model("a")
    assert [v.version for v in entry.versions] == [1, 2]
    assert [v.version for v in entry.selected()] == [2]


def test_missing_repository_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="does not exist"):
        Repository(tmp_path / "nope")


def test_folders_named_with_non_ascii_digits_are_not_versions(tmp_path: Path) -> None:
    model_dir = tmp_path / "repo" / "a"
    add_version(model_dir, {"model.onnx": _src(tmp_path, "a", b"1")})
    (model_dir / "config.toml").write_text("")
    for odd in ("²", "٣", "1²"):  # str.isdigit() says yes to each; int() fails on the first two
        (model_dir / odd).mkdir()
        (model_dir / odd / MANIFEST_NAME).write_text("{}")
    assert [v.version for v in Repository(tmp_path / "repo").model("a").versions] == [1]
    assert add_version(model_dir, {"model.onnx": _src(tmp_path, "b", b"2")}).name == "2"
