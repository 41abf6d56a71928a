import asyncio
import hashlib
from pathlib import Path

import pytest

from edgeinfer.registry.desired import FileSource
from edgeinfer.registry.fetch import FetchError, ensure_version
from edgeinfer.repository import Repository, verify_manifest


def _file(tmp_path: Path, content: bytes) -> tuple[Path, str]:
    p = tmp_path / "src" / "m.onnx"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(content)
    return p, hashlib.sha256(content).hexdigest()


def _repo(tmp_path: Path) -> Repository:
    (tmp_path / "repo").mkdir()
    return Repository(tmp_path / "repo")


def test_verified_artifact_is_published_under_the_desired_version(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    src, sha = _file(tmp_path, b"weights")
    files = {"model.onnx": FileSource(str(src), sha)}
    assert asyncio.run(ensure_version(repo, "m", 7, files, "max_batch_size = 4\n"))
    target = repo.root / "m" / "7"
    verify_manifest(target)
    assert (target / "model.onnx").read_bytes() == b"weights"
    assert (repo.root / "m" / "config.toml").read_text() == "max_batch_size = 4\n"
    assert [v.version for v in repo.model("m").versions] == [7]
    # Already there with the same checksums: nothing to do.
    assert not asyncio.run(ensure_version(repo, "m", 7, files))
    assert sorted(p.name for p in (repo.root / "m").iterdir()) == ["7", "config.toml"]


def test_wrong_sha256_is_refused_before_anything_is_published(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    src, _ = _file(tmp_path, b"tampered")
    with pytest.raises(FetchError, match="sha256") as e:
        asyncio.run(ensure_version(repo, "m", 2, {"model.onnx": FileSource(str(src), "0" * 64)}))
    assert e.value.permanent
    assert sorted(p.name for p in (repo.root / "m").iterdir()) == ["config.toml"]  # no temp left


def test_a_version_on_disk_that_differs_from_the_registry_is_not_used(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    src, sha = _file(tmp_path, b"one")
    asyncio.run(ensure_version(repo, "m", 1, {"model.onnx": FileSource(str(src), sha)}))
    other = {"model.onnx": FileSource(str(src), "1" * 64)}
    with pytest.raises(FetchError, match="differs from the registry") as e:
        asyncio.run(ensure_version(repo, "m", 1, other))
    assert e.value.permanent


def test_missing_sources(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    with pytest.raises(FetchError, match="names no artifact") as e:
        asyncio.run(ensure_version(repo, "m", 1, None))
    assert e.value.permanent
    gone = {"model.onnx": FileSource(str(tmp_path / "nope.onnx"), "1" * 64)}
    with pytest.raises(FetchError, match="does not exist") as e:
        asyncio.run(ensure_version(repo, "m", 1, gone))
    assert not e.value.permanent  # a mount may come back: retried
    unreachable = {"model.onnx": FileSource("http://127.0.0.1:9/m.onnx", "1" * 64)}
    with pytest.raises(FetchError, match="failed") as e:
        asyncio.run(ensure_version(repo, "m", 1, unreachable))
    assert not e.value.permanent
