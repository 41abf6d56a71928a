"""Version manifests: sha256 of every file, written last so a half-copied version is never eligible."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from edgeinfer.errors import RepositoryError

MANIFEST_NAME = "manifest.json"
_CHUNK = 1 << 20


def version_number(name: str) -> int | None:
    """A version folder's number: ASCII digits only ('²' and '٣' are digits to str.isdigit)."""
    if not (name.isascii() and name.isdigit()) or len(name) > 18:
        return None
    return int(name)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files_of(version_dir: Path) -> list[Path]:
    return sorted(p for p in version_dir.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)


def version_files(version_dir: Path) -> dict[str, Path]:
    """A version's files (its manifest aside) as `add_version` takes them: name -> path."""
    return {str(p.relative_to(version_dir)): p for p in _files_of(version_dir)}


def write_manifest(version_dir: Path) -> dict[str, str]:
    """Hash every file in `version_dir` and write the manifest atomically (temp file + rename)."""
    files = {p.relative_to(version_dir).as_posix(): sha256_file(p) for p in _files_of(version_dir)}
    body = {"files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    fd, tmp = tempfile.mkstemp(dir=version_dir, prefix=".manifest.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(body, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a server may run as another user
    os.replace(tmp, version_dir / MANIFEST_NAME)
    return files


def read_manifest(version_dir: Path) -> dict[str, str]:
    path = version_dir / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text())
        files = raw["files"]
        if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in files.items()
        ):
            raise ValueError("'files' must map file names to sha256 strings")
        return files
    except FileNotFoundError:
        raise RepositoryError(
            f"{version_dir}: no {MANIFEST_NAME} (version not published)"
        ) from None
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise RepositoryError(f"{path}: malformed manifest: {e}") from e


def verify_manifest(version_dir: Path) -> None:
    """Raise RepositoryError unless every file listed is present with the listed sha256."""
    for rel, expected in read_manifest(version_dir).items():
        path = version_dir / rel
        try:
            inside = path.resolve().is_relative_to(version_dir.resolve())
            present = inside and path.is_file()
            actual = sha256_file(path) if present else ""
        except (OSError, ValueError) as e:  # NUL byte, name too long or unencodable, unreadable
            raise RepositoryError(
                f"{version_dir}: manifest entry {rel!r} cannot be checked: {e}"
            ) from e
        if not inside:
            raise RepositoryError(
                f"{version_dir}: manifest names a file outside the version: {rel}"
            )
        if not present:
            raise RepositoryError(f"{version_dir}: file {rel} listed in the manifest is missing")
        if actual != expected:
            raise RepositoryError(
                f"{version_dir}: checksum mismatch for {rel} "
                f"(manifest {expected[:12]}…, file {actual[:12]}…)"
            )


def add_version(
    model_dir: Path,
    files: dict[str, Path],
    version: int | None = None,
) -> Path:
    """Publish a new version atomically: copy into a temp dir, write the manifest, rename.

    `files` maps the name inside the version directory to a source path. Without `version`
    the next number after the highest existing one is used.
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    existing = [n for p in model_dir.iterdir() if p.is_dir() and (n := version_number(p.name))]
    if version is None:
        version = max(existing, default=0) + 1
    if version < 1:
        raise RepositoryError(f"version must be a positive integer, got {version}")
    target = model_dir / str(version)
    if target.exists():
        raise RepositoryError(f"{target} already exists; pick another --version")
    _remove_abandoned(model_dir)
    tmp = Path(tempfile.mkdtemp(dir=model_dir, prefix=f".v{version}.{os.getpid()}."))
    try:
        for name, src in files.items():
            if not src.is_file():
                raise RepositoryError(f"{src}: no such file")
            dst = tmp / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        write_manifest(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _remove_abandoned(model_dir: Path) -> None:
    """Delete temp dirs left by adds that were killed: `.v<N>.<pid>.*` whose process is gone."""
    for p in model_dir.glob(".v*.*.*"):
        parts = p.name.split(".")
        if not (p.is_dir() and len(parts) >= 4 and version_number(parts[2]) is not None):
            continue
        try:
            os.kill(int(parts[2]), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (PermissionError, OverflowError):
            pass  # alive (another user's) or not a pid: leave it
