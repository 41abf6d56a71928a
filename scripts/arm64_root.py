"""The arm64 Debian root scripts/check_arm64.py serves from: host tools, binfmt_misc, the root
file system (cached), commands run inside it, and the host's pip configuration mirrored into it.

Runs on an x86 Debian host as root. Nothing here names a mirror or an index: they come from the
machine's own apt sources and pip configuration.
"""

from __future__ import annotations

import ast
import configparser
import contextlib
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

SUITE = "bookworm"  # Python 3.11, as in the Dockerfile's python:3.11-slim
PACKAGES = ("python3", "python3-venv", "ca-certificates")
HOST_TOOLS = {"qemu-aarch64-static": "qemu-user-static", "arch-test": "arch-test"}
BINFMT = Path("/proc/sys/fs/binfmt_misc")
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
# Documentation, man pages and translations are of no use in a check root.
_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")


def log(message: str) -> None:
    print(f"check-arm64: {message}", flush=True)


def fail(message: str) -> None:
    sys.exit(f"check-arm64: {message}")


def run(cmd: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=True, text=True, **kwargs)  # type: ignore[call-overload]


# ---- host tools and binfmt_misc -------------------------------------------------------------
def ensure_host_tools() -> str:
    """Install qemu-user-static, arch-test and mmdebstrap (or use debootstrap) from Debian."""
    missing = [pkg for tool, pkg in HOST_TOOLS.items() if not shutil.which(tool)]
    bootstrap = "mmdebstrap" if shutil.which("mmdebstrap") else "debootstrap"
    if not shutil.which(bootstrap):
        missing.append("mmdebstrap")
        bootstrap = "mmdebstrap"
    apt_install(missing)
    return bootstrap


def apt_install(packages: Sequence[str]) -> None:
    if not packages:
        return
    if os.geteuid() != 0:
        fail(f"needs root to install {' '.join(packages)} (apt) and to chroot")
    log(f"installing {' '.join(packages)} (apt)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    quiet = {"stdout": subprocess.DEVNULL, "env": env}
    run(["apt-get", "update", "-q"], **quiet)
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], **quiet)


def ensure_binfmt() -> None:
    """Mount binfmt_misc if needed and register qemu-aarch64 (flag F: the kernel keeps the
    interpreter open, so it runs inside the chroot without a copy there)."""
    if not (BINFMT / "register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)])
    if not (BINFMT / "qemu-aarch64").exists():
        (BINFMT / "register").write_text(BINFMT_CONF.read_text().strip() + "\n")
    probe = subprocess.run(["arch-test", "arm64"], capture_output=True, text=True)
    if probe.returncode != 0:
        fail(f"arm64 binaries do not run here: {probe.stdout.strip() or probe.stderr.strip()}")


# ---- the Debian mirror, from this machine's apt sources ---------------------------------------
def _source_entries() -> Iterator[tuple[str, list[str]]]:
    """(URI, suites) of each `deb` entry in the one-line and deb822 apt sources."""
    base = Path("/etc/apt")
    for path in [base / "sources.list", *sorted((base / "sources.list.d").glob("*.list"))]:
        for line in path.read_text().splitlines() if path.is_file() else []:
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                yield words[1], [words[2]]
    for path in sorted((base / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                key, sep, value = line.partition(":")
                if sep and not line.startswith(("#", " ")):
                    fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled") != "no":
                for uri in fields.get("uris", "").split():
                    yield uri, fields.get("suites", "").split()


def debian_mirror() -> str:
    """The host's Debian archive (the entry for its release, not -security/-updates)."""
    if os.environ.get("EDGEINFER_ARM64_MIRROR"):
        return os.environ["EDGEINFER_ARM64_MIRROR"]
    release = Path("/etc/os-release").read_text() if Path("/etc/os-release").exists() else ""
    match = re.search(r"^VERSION_CODENAME=(\S+)", release, re.M)
    wanted = {SUITE, match.group(1) if match else SUITE}
    for uri, suites in _source_entries():
        if wanted & set(suites) and "security" not in uri:
            return uri
    fail("no Debian mirror found in /etc/apt/sources*; set EDGEINFER_ARM64_MIRROR")
    raise AssertionError  # unreachable


# ---- the root file system ---------------------------------------------------------------------
def rootfs(cache: Path, bootstrap: str) -> tuple[Path, float | None]:
    """The cached arm64 root (built when missing) and the seconds a build took (None: cached)."""
    key = hashlib.sha256(repr((SUITE, PACKAGES, _EXCLUDES)).encode()).hexdigest()[:12]
    root = cache / f"rootfs-{SUITE}-{key}"
    if (root / ".complete").exists():
        return root, None
    cache.mkdir(parents=True, exist_ok=True)
    staging = cache / f".building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    started = time.perf_counter()
    mirror = debian_mirror()
    log(f"building the arm64 {SUITE} root with {bootstrap} (cold: several minutes)")
    if bootstrap == "mmdebstrap":
        opts = [f"--dpkgopt=path-exclude={p}" for p in _EXCLUDES]
        run(["mmdebstrap", "--arch=arm64", "--variant=apt", "--quiet", *opts,
             f"--include={','.join(PACKAGES)}", SUITE, str(staging), mirror])  # fmt: skip
    else:
        run(["debootstrap", "--arch=arm64", "--variant=minbase", f"--include={','.join(PACKAGES)}",
             SUITE, str(staging), mirror], stdout=subprocess.DEVNULL)  # fmt: skip
    (staging / ".complete").write_text(f"{SUITE} {' '.join(PACKAGES)}\n")
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)
    return root, time.perf_counter() - started


def root_command(root: Path, argv: Sequence[str], env: dict[str, str],
                 binds: Sequence[Path] = ()) -> list[str]:  # fmt: skip
    """`argv` inside `root` in a private mount namespace: /proc, /dev and `binds` (read-only,
    at the same path) are mounted for it and vanish with it. No /sys: ONNX Runtime's cpuinfo
    crashes on the host's x86 sysfs under emulation."""
    mounts = [f"mount -t proc proc {shlex.quote(str(root / 'proc'))}",
              f"mount --rbind /dev {shlex.quote(str(root / 'dev'))}"]  # fmt: skip
    for path in binds:
        target = shlex.quote(str(root / str(path).lstrip("/")))
        mounts += [f"mkdir -p {target}", f"mount --bind -o ro {shlex.quote(str(path))} {target}"]
    pairs = [f"{k}={v}" for k, v in env.items()]
    inner = ["chroot", str(root), "/usr/bin/env", "-i", *pairs, *argv]
    script = " && ".join([*mounts, "exec " + shlex.join(inner)])
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


def base_env() -> dict[str, str]:
    """The environment inside the root. qemu emulates a Cortex-A76 (the Raspberry Pi 5's core:
    NEON, fp16, dotprod; no SVE or i8mm), so runtimes pick the kernels a Pi 5 would use."""
    env = {"PATH": "/opt/edgeinfer/bin:/usr/local/bin:/usr/bin:/bin", "HOME": "/root",
           "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
           "QEMU_CPU": os.environ.get("EDGEINFER_ARM64_CPU", "cortex-a76")}  # fmt: skip
    for name in ("http_proxy", "https_proxy", "no_proxy"):
        for key in (name, name.upper()):
            if key in os.environ:
                env[key] = os.environ[key]
    return env


# ---- pip: the host's configuration, mirrored into the root ------------------------------------
def _host_pip_config() -> dict[str, str]:
    """The effective pip settings (files and PIP_* variables) as `pip config list` shows them;
    later scopes win as they do for pip (global < user < site < environment)."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                         capture_output=True, text=True).stdout  # fmt: skip
    settings: dict[str, str] = {}
    for line in out.splitlines():
        name, sep, value = line.partition("=")
        if sep and "." in name:
            key = name.split(".", 1)[1]
            with contextlib.suppress(ValueError, SyntaxError):
                settings[key] = str(ast.literal_eval(value))
    return settings


def _local_path(token: str) -> Path | None:
    path = token.removeprefix("file://")
    return Path(path) if path.startswith("/") else None


def _mount_point(folder: Path) -> Path:
    """What to bind for a local folder pip reads: a PEP 503 index named `simple` usually links
    its files relatively (`../../files/x.whl`), so its parent goes in with it."""
    return folder.parent if folder.name == "simple" else folder


def mirror_pip_config(root: Path) -> list[Path]:
    """Write the host's pip settings to `root`/etc/pip.conf. Local files they name (CA bundle,
    constraints) are copied to the same path in the root; local folders (find-links, file://
    indexes) are returned to be bind-mounted there, read-only; paths that do not exist are
    dropped. Indexes on the network are kept as they are."""
    parser = configparser.ConfigParser(interpolation=None)
    parser["global"] = {}
    binds: list[Path] = []
    for key, value in _host_pip_config().items():
        kept = []
        for token in value.split():
            path = _local_path(token)
            if path is None:
                kept.append(token)
            elif path.is_dir():
                binds.append(_mount_point(path))
                kept.append(token)
            elif path.is_file():
                target = root / str(path).lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                kept.append(token)
        if kept or not value:
            parser["global"][key] = " ".join(kept)
    with open(root / "etc" / "pip.conf", "w") as f:
        parser.write(f)
    return sorted(set(binds))


def qemu_version() -> str:
    out = subprocess.run(["qemu-aarch64-static", "--version"], capture_output=True, text=True)
    match = re.search(r"version (\S+)", out.stdout)
    return match.group(1) if match else ""
