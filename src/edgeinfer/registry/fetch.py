"""Bring a desired version's files into the local repository, verified before anything uses them.

Each file comes from a local path or an http(s) URL into a temp folder inside the model's folder
(the same file system, so nothing half-written is ever visible), is hashed while it arrives and
compared with the registry's sha256; only then is the version published with `add_version`
(temp copy + manifest + rename), under the version number the registry gave it.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import httpx

from edgeinfer.registry.desired import FileSource
from edgeinfer.repository import MANIFEST_NAME, Repository, add_version
from edgeinfer.repository.layout import CONFIG_NAME
from edgeinfer.repository.manifest import read_manifest

DEFAULT_CONFIG = 'backend = "onnxruntime"\n'
_CHUNK = 1 << 20


class FetchError(Exception):
    """An artifact could not be brought in. `permanent`: retrying the same desired state cannot
    help (wrong checksum, no source); otherwise (network) it is retried with backoff."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


async def ensure_version(
    repository: Repository,
    model: str,
    version: int,
    files: Mapping[str, FileSource] | None,
    config: str = "",
) -> bool:
    """Make `<repo>/<model>/<version>` exist with the desired files. True if it was fetched now.
    A version already on disk is kept only if its manifest matches the registry's sha256s."""
    model_dir = repository.root / model
    target = model_dir / str(version)
    if (target / MANIFEST_NAME).is_file():
        if files:
            on_disk = await asyncio.to_thread(read_manifest, target)
            wrong = sorted(n for n, src in files.items() if on_disk.get(n) != src.sha256)
            if wrong:
                raise FetchError(
                    f"{model} v{version} on this device differs from the registry's "
                    f"sha256 for {', '.join(wrong)}; remove it to re-fetch",
                    permanent=True,
                )
        return False
    if not files:
        raise FetchError(
            f"{model} v{version} is not on this device and the registry names no "
            "artifact for it (fleet set … --artifact)",
            permanent=True,
        )
    model_dir.mkdir(parents=True, exist_ok=True)
    if not (model_dir / CONFIG_NAME).exists():
        (model_dir / CONFIG_NAME).write_text(config or DEFAULT_CONFIG)
    tmp = Path(tempfile.mkdtemp(dir=model_dir, prefix=f".fetch-v{version}."))
    try:
        local: dict[str, Path] = {}
        for name, src in files.items():
            local[name] = tmp / name.replace("/", "__")
            digest = await _download(src.url, local[name])
            if digest != src.sha256:
                raise FetchError(
                    f"{model} v{version}: {name} from {src.url} has sha256 "
                    f"{digest[:12]}…, the registry says {src.sha256[:12]}…; refused",
                    permanent=True,
                )
        await asyncio.to_thread(add_version, model_dir, local, version)
    finally:
        await asyncio.to_thread(shutil.rmtree, tmp, True)
    return True


async def _download(url: str, dst: Path) -> str:
    """Copy `url` (http(s) or a local path) to `dst`; the sha256 of what was written."""
    h = hashlib.sha256()
    if url.startswith(("http://", "https://")):
        try:
            async with (
                httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as client,
                client.stream("GET", url, follow_redirects=True) as resp,
            ):
                if resp.status_code != 200:
                    raise FetchError(
                        f"GET {url} answered {resp.status_code}",
                        permanent=resp.status_code in (403, 404, 410),
                    )
                with dst.open("wb") as f:
                    async for chunk in resp.aiter_bytes(_CHUNK):
                        h.update(chunk)
                        f.write(chunk)
        except httpx.HTTPError as e:
            raise FetchError(f"GET {url} failed: {e!r}", permanent=False) from e
        return h.hexdigest()
    path = Path(url.removeprefix("file://"))
    if not path.is_file():
        raise FetchError(f"artifact {path} does not exist on this device", permanent=False)

    def copy() -> str:
        with path.open("rb") as src, dst.open("wb") as out:
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
        return h.hexdigest()

    return await asyncio.to_thread(copy)
