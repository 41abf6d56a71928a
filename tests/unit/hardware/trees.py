"""Fake sysfs/procfs trees of real device shapes, built in a temporary directory.

The contents follow what the kernel prints on those devices (trimmed to the fields we read).
"""

from __future__ import annotations

import struct
from pathlib import Path

PI5_CPUINFO = "".join(
    f"processor\t: {n}\n"
    "BogoMIPS\t: 108.00\n"
    "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
    "asimdrdm lrcpc dcpop asimddp\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\n"
    "CPU part\t: 0xd0b\nCPU revision\t: 1\n\n"
    for n in range(4)
)
PI5_CPUINFO += "Revision\t: d04170\nSerial\t\t: 2c6c1b0a5d1e4f3a\n"
PI5_CPUINFO += "Model\t\t: Raspberry Pi 5 Model B Rev 1.0\n"

XEON_CPUINFO = "".join(
    f"processor\t: {n}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 106\n"
    "model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz\ncpu MHz\t\t: 2899.998\n"
    "flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 avx512f avx512dq "
    "avx512bw avx512vl avx512_vnni hypervisor\n\n"
    for n in range(2)  # the fields repeat per CPU; two blocks are enough to parse
)

VM_CPUINFO = "".join(
    f"processor\t: {n}\nmodel name\t: Intel Core Processor (Haswell, no TSX)\n"
    "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx fma avx2 hypervisor\n\n"
    for n in range(2)
)

# A Raspberry Pi 3 on a 32-bit kernel of 2018: `Hardware` is the SoC family, not the board.
PI3_ARMV7_CPUINFO = (
    "".join(
        f"processor\t: {n}\nmodel name\t: ARMv7 Processor rev 4 (v7l)\nBogoMIPS\t: 38.40\n"
        "Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae "
        "evtstrm crc32\nCPU implementer\t: 0x41\nCPU architecture: 7\nCPU part\t: 0xd03\n\n"
        for n in range(4)
    )
    + "Hardware\t: BCM2835\nRevision\t: a02082\nSerial\t\t: 00000000c2b2b9a1\n"
)

# HWCAP / HWCAP2 that qemu-aarch64 7.2 (Debian 12's qemu-user-static, default CPU "max") gives
# a process, as `LD_SHOW_AUXV=1 /bin/true` printed them in an arm64 root on an x86 host.
QEMU_MAX_HWCAP = (0xECFFFFFB, 0x7F877FFF)

RK3588_CPUINFO = "".join(
    f"processor\t: {n}\nBogoMIPS\t: 48.00\n"
    "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
    "asimdrdm lrcpc dcpop asimddp\n"
    f"CPU implementer\t: 0x41\nCPU part\t: {'0xd05' if n < 4 else '0xd0b'}\n\n"
    for n in range(8)
)


def meminfo(total_kb: int, available_kb: int) -> str:
    return (
        f"MemTotal:       {total_kb} kB\nMemFree:        {available_kb // 2} kB\n"
        f"MemAvailable:   {available_kb} kB\nBuffers:          12345 kB\n"
        "HugePages_Total:       0\n"
    )


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def auxv(hwcap: int, hwcap2: int = 0) -> bytes:
    """/proc/self/auxv of a 64-bit process: (type, value) pairs, AT_PAGESZ, AT_HWCAP,
    AT_HWCAP2, then AT_NULL."""
    pairs = [(6, 4096), (16, hwcap), (26, hwcap2), (0, 0)]
    return b"".join(struct.pack("<QQ", key, value) for key, value in pairs)


def cpus(n: int, cur_khz: int | None = None, max_khz: int | None = None,
         capacity: int | None = None, first: int = 0, cluster: int | None = None,
         ) -> dict[str, str | bytes]:  # fmt: skip
    """CPUs first..first+n-1 as sysfs shows them. Without `cluster`, one core per CPU numbered
    by CPU (x86 style); with it, an arm64 DT cluster: core_id counts from 0 in each cluster and
    physical_package_id is 0 for the whole chip (kernels >= 5.16)."""
    files: dict[str, str | bytes] = {}
    for cpu in range(first, first + n):
        d = f"sys/devices/system/cpu/cpu{cpu}"
        files[f"{d}/topology/core_id"] = f"{cpu if cluster is None else cpu - first}\n"
        files[f"{d}/topology/physical_package_id"] = "0\n"
        files[f"{d}/topology/core_cpus_list"] = f"{cpu}\n"
        files[f"{d}/topology/thread_siblings_list"] = f"{cpu}\n"
        if cluster is not None:
            files[f"{d}/topology/cluster_id"] = f"{cluster}\n"
        if cur_khz is not None:
            files[f"{d}/cpufreq/scaling_cur_freq"] = f"{cur_khz}\n"
        if max_khz is not None:
            files[f"{d}/cpufreq/cpuinfo_max_freq"] = f"{max_khz}\n"
        if capacity is not None:
            files[f"{d}/cpu_capacity"] = f"{capacity}\n"
    return files


def raspberry_pi(root: Path, temp_millideg: int = 61234, throttled: str | None = None) -> Path:
    """Raspberry Pi 5 (4x Cortex-A76) on Raspberry Pi OS: cgroup v2, no limits on the session."""
    scope = "sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope"
    files = {
        "sys/class/thermal/thermal_zone0/type": "cpu-thermal\n",
        "sys/class/thermal/thermal_zone0/temp": f"{temp_millideg}\n",
        "sys/devices/system/cpu/online": "0-3\n",
        **cpus(4, cur_khz=1500000, max_khz=2400000, capacity=1024, cluster=0),
        "proc/cpuinfo": PI5_CPUINFO,
        "proc/device-tree/model": "Raspberry Pi 5 Model B Rev 1.0\x00",
        "proc/meminfo": meminfo(8_245_000, 7_100_000),
        "proc/self/cgroup": "0::/user.slice/user-1000.slice/session-3.scope\n",
        "sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory pids\n",
        f"{scope}/memory.max": "max\n",
        f"{scope}/memory.current": "52428800\n",
        f"{scope}/cpu.max": "max 100000\n",
    }
    if throttled is not None:
        files["sys/devices/platform/soc/soc:firmware/get_throttled"] = throttled + "\n"
    return write(root, files)


def container_v2(root: Path, cores: int = 64) -> Path:
    """A Docker container (`--memory 2g --cpus 2`) on a 64-core x86 host, cgroup namespace."""
    return write(root, {
        "sys/devices/system/cpu/online": f"0-{cores - 1}\n",
        **cpus(cores),
        "proc/cpuinfo": XEON_CPUINFO,
        "proc/meminfo": meminfo(263_000_000, 250_000_000),
        "proc/self/cgroup": "0::/\n",
        "sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n",
        "sys/fs/cgroup/memory.max": "2147483648\n",
        "sys/fs/cgroup/memory.current": "1610612736\n",
        "sys/fs/cgroup/memory.stat": "anon 1073741824\nfile 536870912\ninactive_file 268435456\n",
        "sys/fs/cgroup/memory.events": "low 0\nhigh 0\nmax 41\noom 4\noom_kill 3\n"
                                       "oom_group_kill 0\n",
        "sys/fs/cgroup/cpu.max": "200000 100000\n",
        "sys/fs/cgroup/cpuset.cpus.effective": f"0-{cores - 1}\n",
    })  # fmt: skip


def rk3588(root: Path) -> Path:
    """RK3588 (Orange Pi 5 / Rock 5B): 4x Cortex-A55 (cpu0-3) + 4x Cortex-A76 (cpu4-7). Its
    device tree's cpu-map has three clusters (cpu0-3, cpu4-5, cpu6-7), so core_id runs 0-3, 0-1,
    0-1 and every CPU is in package 0; each CPU is its own core (no SMT)."""
    return write(root, {
        "sys/devices/system/cpu/online": "0-7\n",
        **cpus(4, cur_khz=1800000, max_khz=1800000, capacity=446, cluster=0),
        **cpus(2, cur_khz=2256000, max_khz=2256000, capacity=1024, first=4, cluster=1),
        **cpus(2, cur_khz=2256000, max_khz=2256000, capacity=1024, first=6, cluster=2),
        "sys/class/thermal/thermal_zone0/type": "soc-thermal\n",
        "sys/class/thermal/thermal_zone0/temp": "48000\n",
        "sys/class/thermal/thermal_zone1/type": "bigcore0-thermal\n",
        "sys/class/thermal/thermal_zone1/temp": "49000\n",
        "proc/cpuinfo": RK3588_CPUINFO,
        "proc/meminfo": meminfo(16_000_000, 15_000_000),
        "proc/device-tree/model": "Radxa ROCK 5B\x00",
    })  # fmt: skip


def bare_vm(root: Path) -> Path:
    """A small cloud VM: no thermal zones, no cpufreq, no cgroup files visible."""
    return write(root, {"proc/cpuinfo": VM_CPUINFO, "proc/meminfo": meminfo(2_000_000, 1_500_000)})
