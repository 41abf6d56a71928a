"""Forgiving readers for sysfs/procfs files.

A missing, empty, unreadable or malformed file is the normal case on some device (a VM has no
thermal zones, a container hides cpufreq, some sensors answer EIO): every reader here returns
None instead of raising, and callers turn None into "unknown".
"""

from __future__ import annotations

import os
from pathlib import Path

# sysfs attributes are a page at most; /proc/cpuinfo on a 256-core host is ~300 KB.
_MAX_BYTES = 4 << 20


def under(root: str | os.PathLike[str], absolute: str) -> Path:
    """`absolute` ("/sys/...") inside the tree at `root`."""
    return Path(root) / absolute.lstrip("/")


def read_text(path: Path) -> str | None:
    """The file's text, stripped; None when it cannot be read or is empty."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_BYTES)
    except (OSError, ValueError):  # ValueError: a NUL byte in a crafted path
        return None
    text = data.decode("utf-8", errors="replace").replace("\x00", "").strip()
    return text or None


def read_int(path: Path) -> int | None:
    """The file's first token as an integer (sysfs style "61234\\n"); None if it is not one."""
    text = read_text(path)
    if text is None:
        return None
    try:
        return int(text.split()[0])
    except ValueError:
        return None


def read_keyed(path: Path) -> dict[str, str]:
    """A "key value" per line file (memory.events, memory.stat, oom_control) as a dict."""
    out: dict[str, str] = {}
    for line in (read_text(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[0]] = parts[1]
    return out


def to_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def parse_cpu_list(text: str | None) -> tuple[int, ...] | None:
    """A kernel CPU list ("0-3,6,8-9") as sorted CPU numbers; None if malformed."""
    if text is None:
        return None
    cpus: set[int] = set()
    try:
        for part in text.replace("\n", ",").split(","):
            part = part.strip()
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            first, last = int(lo), int(hi) if sep else int(lo)
            if first < 0 or last < first or last - first > 1 << 16:
                return None
            cpus.update(range(first, last + 1))
    except ValueError:
        return None
    return tuple(sorted(cpus))


def cpu_dirs(root: str | os.PathLike[str]) -> dict[int, Path]:
    """`<root>/sys/devices/system/cpu/cpuN` directories by N."""
    base = under(root, "/sys/devices/system/cpu")
    out: dict[int, Path] = {}
    try:
        entries = list(base.iterdir())
    except OSError:
        return out
    for entry in entries:
        name = entry.name
        if name.startswith("cpu") and name[3:].isdigit():
            out[int(name[3:])] = entry
    return dict(sorted(out.items()))
