"""Fake sysfs/procfs trees of real device shapes, built in a temporary directory.

The contents follow what the kernel prints on those devices (trimmed to the fields we read).
"""

from __future__ import annotations

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


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def cpus(n: int, cur_khz: int | None = None, max_khz: int | None = None,
         capacity: int | None = None, first: int = 0) -> dict[str, str]:  # fmt: skip
    files: dict[str, str] = {}
    for cpu in range(first, first + n):
        d = f"sys/devices/system/cpu/cpu{cpu}"
        files[f"{d}/topology/core_id"] = f"{cpu}\n"
        files[f"{d}/topology/physical_package_id"] = "0\n"
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
        **cpus(4, cur_khz=1500000, max_khz=2400000, capacity=1024),
        "proc/cpuinfo": PI5_CPUINFO,
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


def big_little(root: Path) -> Path:
    """RK3588 (Orange Pi 5 / Rock 5B): 4x Cortex-A55 (cpu0-3) + 4x Cortex-A76 (cpu4-7)."""
    return write(root, {
        "sys/devices/system/cpu/online": "0-7\n",
        **cpus(4, cur_khz=1800000, max_khz=1800000, capacity=446),
        **cpus(4, cur_khz=2256000, max_khz=2256000, capacity=1024, first=4),
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
