"""Memory and CPU identity from procfs (and the board name from device tree / DMI)."""

from __future__ import annotations

import os
import platform
import struct
from dataclasses import dataclass, field

from edgeinfer.hardware._read import read_text, under

Root = str | os.PathLike[str]


# ---- /proc/meminfo --------------------------------------------------------------------------
@dataclass(frozen=True)
class MemInfo:
    total_bytes: int | None = None
    available_bytes: int | None = None  # MemAvailable: what can be allocated without swapping


def _meminfo_kb(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        fields = rest.split()
        if sep and fields and fields[0].isdigit():
            out[key.strip()] = int(fields[0]) * (1024 if fields[1:2] == ["kB"] else 1)
    return out


def read_meminfo(root: Root = "/") -> MemInfo:
    values = _meminfo_kb(read_text(under(root, "/proc/meminfo")) or "")
    available = values.get("MemAvailable")
    if available is None and all(k in values for k in ("MemFree", "Buffers", "Cached")):
        available = values["MemFree"] + values["Buffers"] + values["Cached"]  # kernels < 3.14
    return MemInfo(values.get("MemTotal"), available)


# ---- /proc/cpuinfo --------------------------------------------------------------------------
# (name we report, flags that mean it): x86 `flags`, then arm64 `Features`. The order is the
# order of interest for INT8/INT4 inference, fastest integer dot product last in each group.
_SIMD: tuple[tuple[str, frozenset[str]], ...] = (
    ("sse4_2", frozenset({"sse4_2"})),
    ("avx2", frozenset({"avx2"})),
    ("fma", frozenset({"fma"})),
    ("avx512f", frozenset({"avx512f"})),
    ("avx512bw", frozenset({"avx512bw"})),
    ("avx512_bf16", frozenset({"avx512_bf16"})),
    ("avx_vnni", frozenset({"avx_vnni"})),
    ("avx512_vnni", frozenset({"avx512_vnni", "avx512vnni"})),
    ("amx_bf16", frozenset({"amx_bf16"})),
    ("amx_int8", frozenset({"amx_int8"})),
    ("neon", frozenset({"neon", "asimd"})),
    ("fp16", frozenset({"asimdhp", "fphp"})),
    ("bf16", frozenset({"bf16"})),
    ("sve", frozenset({"sve"})),
    ("sve2", frozenset({"sve2"})),
    ("dotprod", frozenset({"asimddp"})),
    ("i8mm", frozenset({"i8mm"})),
)
# Integer dot-product instructions, best first: the ones that make INT8 MatMul/Conv fast.
INT8_DOT = ("amx_int8", "avx512_vnni", "avx_vnni", "i8mm", "dotprod")

# (implementer, part) from arm64 /proc/cpuinfo -> core name.
_ARM_PARTS = {
    ("0x41", "0xd03"): "Cortex-A53",
    ("0x41", "0xd04"): "Cortex-A35",
    ("0x41", "0xd05"): "Cortex-A55",
    ("0x41", "0xd07"): "Cortex-A57",
    ("0x41", "0xd08"): "Cortex-A72",
    ("0x41", "0xd09"): "Cortex-A73",
    ("0x41", "0xd0a"): "Cortex-A75",
    ("0x41", "0xd0b"): "Cortex-A76",
    ("0x41", "0xd0c"): "Neoverse-N1",
    ("0x41", "0xd0d"): "Cortex-A77",
    ("0x41", "0xd40"): "Neoverse-V1",
    ("0x41", "0xd41"): "Cortex-A78",
    ("0x41", "0xd42"): "Cortex-A78AE",
    ("0x41", "0xd44"): "Cortex-X1",
    ("0x41", "0xd46"): "Cortex-A510",
    ("0x41", "0xd47"): "Cortex-A710",
    ("0x41", "0xd48"): "Cortex-X2",
    ("0x41", "0xd49"): "Neoverse-N2",
    ("0x41", "0xd4b"): "Cortex-A78C",
    ("0x41", "0xd4f"): "Neoverse-V2",
    ("0x41", "0xd80"): "Cortex-A520",
    ("0x41", "0xd81"): "Cortex-A720",
    ("0x41", "0xd82"): "Cortex-X4",
    ("0x4e", "0x004"): "NVIDIA Carmel",
}


# arm64 HWCAP / HWCAP2 bits (arch/arm64/include/uapi/asm/hwcap.h), named as /proc/cpuinfo
# prints them. Under user-mode emulation (qemu-aarch64 on an x86 host) /proc/cpuinfo is the
# host's, but the auxiliary vector the emulator gives the process describes the emulated CPU.
_HWCAP = (
    "fp",
    "asimd",
    "evtstrm",
    "aes",
    "pmull",
    "sha1",
    "sha2",
    "crc32",
    "atomics",
    "fphp",
    "asimdhp",
    "cpuid",
    "asimdrdm",
    "jscvt",
    "fcma",
    "lrcpc",
    "dcpop",
    "sha3",
    "sm3",
    "sm4",
    "asimddp",
    "sha512",
    "sve",
    "asimdfhm",
    "dit",
    "uscat",
    "ilrcpc",
    "flagm",
    "ssbs",
    "sb",
    "paca",
    "pacg",
)
_HWCAP2 = (
    "dcpodp",
    "sve2",
    "sveaes",
    "svepmull",
    "svebitperm",
    "svesha3",
    "svesm4",
    "flagm2",
    "frint",
    "svei8mm",
    "svef32mm",
    "svef64mm",
    "svebf16",
    "i8mm",
    "bf16",
    "dgh",
    "rng",
    "bti",
    "mte",
    "ecv",
    "afp",
    "rpres",
    "mte3",
    "sme",
)
_AT_HWCAP, _AT_HWCAP2 = 16, 26
_ARM64_MACHINES = frozenset({"aarch64", "arm64"})


def read_auxv_hwcaps(root: Root = "/") -> frozenset[str]:
    """arm64 feature names from `/proc/self/auxv` (64-bit little-endian (type, value) pairs)."""
    try:
        with open(under(root, "/proc/self/auxv"), "rb") as f:
            data = f.read(4096)  # a few dozen entries
    except (OSError, ValueError):
        return frozenset()
    values: dict[int, int] = {}
    for key, value in struct.iter_unpack("<QQ", data[: len(data) // 16 * 16]):
        if key == 0:  # AT_NULL ends the vector
            break
        values[key] = value
    names = [n for bit, n in enumerate(_HWCAP) if values.get(_AT_HWCAP, 0) >> bit & 1]
    names += [n for bit, n in enumerate(_HWCAP2) if values.get(_AT_HWCAP2, 0) >> bit & 1]
    return frozenset(names)


@dataclass(frozen=True)
class CpuInfo:
    model: str = ""  # "AMD EPYC 7B13", "Cortex-A76", "Cortex-A55 + Cortex-A76"
    board: str = ""  # "Raspberry Pi 5 Model B Rev 1.0", DMI product name, ...
    arch: str = ""  # "x86" | "arm" | "" (unknown)
    flags: frozenset[str] = field(default=frozenset(), repr=False)
    simd: tuple[str, ...] = ()  # normalized names from _SIMD, in its order
    mhz: float | None = None  # x86 "cpu MHz" of the first CPU: a clock hint where cpufreq is hidden
    processors: int = 0  # "processor" entries: a CPU count when sysfs is not visible
    # An arm64 process whose /proc/cpuinfo describes another architecture (qemu-user on x86):
    # the features come from HWCAP; model, clock and the host's DMI name are not reported.
    emulated: bool = False

    @property
    def int8_dot(self) -> str:
        """The best integer dot-product extension present, or ""."""
        return next((name for name in INT8_DOT if name in self.simd), "")


def _cpuinfo_fields(text: str) -> tuple[dict[str, str], list[tuple[str, str]], int]:
    """(first value of each key, [(implementer, part)] per processor block, processors)."""
    first: dict[str, str] = {}
    parts: list[tuple[str, str]] = []
    implementer = ""
    processors = 0
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        first.setdefault(key, value)
        if key == "processor":
            processors += 1
        elif key == "CPU implementer":
            implementer = value.lower()
        elif key == "CPU part":
            parts.append((implementer, value.lower()))
    return first, parts, processors


def _arm_model(parts: list[tuple[str, str]]) -> str:
    names: list[str] = []
    for implementer, part in parts:
        name = _ARM_PARTS.get((implementer, part), f"ARM core {implementer}/{part}")
        if name not in names:
            names.append(name)
    return " + ".join(names)


def _board(root: Root, fields: dict[str, str], emulated: bool = False) -> str:
    """The board's name: Raspberry Pi OS's `Model` line, else the device tree's model (a Pi on
    a mainline kernel, any other ARM board), else cpuinfo's `Hardware` (only a SoC name such as
    "BCM2835" on older 32-bit kernels), else DMI (x86; under emulation that is the host's)."""
    if fields.get("Model"):
        return fields["Model"]
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        text = read_text(under(root, path))
        if text:
            return text
    if fields.get("Hardware"):
        return fields["Hardware"]
    dmi = None if emulated else read_text(under(root, "/sys/class/dmi/id/product_name"))
    return dmi or ""


def _machine(root: Root, machine: str | None) -> str:
    if machine is not None:
        return machine.lower()
    return platform.machine().lower() if os.path.realpath(root) == "/" else ""


def read_cpuinfo(root: Root = "/", machine: str | None = None) -> CpuInfo:
    """CPU identity and features. `machine` is the process's architecture (default: this
    process's for the real root, unknown for another tree): for an arm64 process whose
    /proc/cpuinfo has no arm64 `Features`, the features come from `/proc/self/auxv`."""
    fields, parts, processors = _cpuinfo_fields(read_text(under(root, "/proc/cpuinfo")) or "")
    from_auxv = _machine(root, machine) in _ARM64_MACHINES and "Features" not in fields
    emulated = from_auxv and bool(fields)  # a cpuinfo, but of another architecture
    if from_auxv:
        fields, parts = {}, []
        arch, flags = "arm", read_auxv_hwcaps(root)
    elif "flags" in fields:
        arch, flags = "x86", frozenset(fields["flags"].split())
    elif "Features" in fields:
        arch, flags = "arm", frozenset(fields["Features"].split())
    else:
        arch, flags = "", frozenset()
    model = fields.get("model name", "")
    if parts and (not model or model.startswith("ARMv")):  # "ARMv8 Processor rev 1 (v8l)"
        model = _arm_model(parts)
    simd = tuple(name for name, aliases in _SIMD if flags & aliases)
    try:
        mhz: float | None = float(fields["cpu MHz"])
    except (KeyError, ValueError):
        mhz = None
    board = _board(root, fields, emulated)
    return CpuInfo(model, board, arch, flags, simd, mhz, processors, emulated)
