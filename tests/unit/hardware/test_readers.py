"""The sysfs/procfs/cgroup readers on fake trees of real device shapes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeinfer.hardware import (
    Cgroup,
    cpu_allowance,
    default_threads,
    read_cgroup,
    read_cpufreq,
    read_cpuinfo,
    read_meminfo,
    read_readings,
    read_thermal,
    read_topology,
    usable_cpus,
)
from edgeinfer.hardware.sysfs import Topology
from tests.unit.hardware import trees

GiB = 1 << 30


def test_raspberry_pi(tmp_path: Path) -> None:
    root = trees.raspberry_pi(tmp_path)
    thermal = read_thermal(root)
    assert thermal.cpu_temp_c == pytest.approx(61.234)
    assert thermal.source == "cpu-thermal"
    freq = read_cpufreq(root)
    assert [c.cpu for c in freq.cores] == [0, 1, 2, 3]
    assert freq.cur_hz_mean == pytest.approx(1.5e9)
    assert freq.max_hz == pytest.approx(2.4e9)
    assert freq.throttled_now is None and freq.throttle_flags == ()
    cpu = read_cpuinfo(root)
    assert (cpu.model, cpu.arch) == ("Cortex-A76", "arm")
    assert cpu.board == "Raspberry Pi 5 Model B Rev 1.0"
    assert {"neon", "dotprod", "fp16"} <= set(cpu.simd)
    assert "i8mm" not in cpu.simd  # the A76 has no i8mm
    assert cpu.int8_dot == "dotprod"
    topo = read_topology(root)
    assert topo.online == (0, 1, 2, 3) and not topo.heterogeneous and topo.big == topo.online
    # cgroup v2 session scope without limits.
    cg = read_cgroup(root)
    assert cg.version == 2 and cg.path == "/user.slice/user-1000.slice/session-3.scope"
    assert (cg.memory_limit_bytes, cg.cpu_quota) == (None, None)
    assert cg.memory_usage_bytes == 52428800
    mem = read_meminfo(root)
    assert (mem.total_bytes, mem.available_bytes) == (8_245_000 * 1024, 7_100_000 * 1024)
    assert usable_cpus(root) == 4 and default_threads(root) == 4
    r = read_readings(root)
    assert r.temp_c == pytest.approx(61.234)
    assert r.memory_limit_bytes == 8_245_000 * 1024  # no cgroup limit: MemTotal
    assert r.memory_used_bytes == (8_245_000 - 7_100_000) * 1024
    assert r.cgroup_memory_limit_bytes is None


def test_raspberry_pi_throttle_flags(tmp_path: Path) -> None:
    # 0x50005: under-voltage now, throttled now, and both have occurred since boot.
    freq = read_cpufreq(trees.raspberry_pi(tmp_path, throttled="50005"))
    assert freq.rpi_throttled == 0x50005
    assert freq.throttle_flags == (
        "under-voltage",
        "throttled",
        "under-voltage-occurred",
        "throttled-occurred",
    )
    assert freq.throttled_now is True
    past_only = read_cpufreq(trees.raspberry_pi(tmp_path / "b", throttled="50000"))
    assert past_only.throttled_now is False


def test_container_with_cgroup_v2_limits(tmp_path: Path) -> None:
    root = trees.container_v2(tmp_path, cores=64)
    cg = read_cgroup(root)
    assert cg.version == 2
    assert cg.memory_limit_bytes == 2147483648
    assert cg.memory_usage_bytes == 1610612736
    assert cg.memory_working_set_bytes == 1610612736 - 268435456  # minus inactive_file
    assert (cg.oom_events, cg.oom_kills) == (4, 3)
    assert cg.cpu_quota == 2.0
    allowance = cpu_allowance(root)
    assert (allowance.online, allowance.quota, allowance.usable) == (64, 2.0, 2)
    assert usable_cpus(root) == 2 and default_threads(root) == 2
    r = read_readings(root)
    assert (r.memory_used_bytes, r.memory_limit_bytes) == (1610612736 - 268435456, 2 * GiB)
    assert r.temp_c is None and r.freq_cur_hz is None
    cpu = read_cpuinfo(root)
    assert cpu.model.startswith("Intel(R) Xeon(R) Platinum 8375C") and cpu.arch == "x86"
    assert cpu.int8_dot == "avx512_vnni" and "avx2" in cpu.simd
    assert cpu.mhz == pytest.approx(2899.998)


def test_fractional_quota_rounds_up(tmp_path: Path) -> None:
    root = trees.container_v2(tmp_path)
    (root / "sys/fs/cgroup/cpu.max").write_text("150000 100000\n")
    assert read_cgroup(root).cpu_quota == 1.5
    assert usable_cpus(root) == 2


def test_nested_cgroup_path_and_the_tightest_ancestor_limit(tmp_path: Path) -> None:
    pod = "sys/fs/cgroup/kubepods.slice/pod1"
    root = trees.write(
        tmp_path,
        {
            "proc/self/cgroup": "0::/kubepods.slice/pod1/ctr\n",
            "sys/fs/cgroup/cgroup.controllers": "cpu memory\n",
            f"{pod}/memory.max": "536870912\n",
            f"{pod}/cpu.max": "50000 100000\n",
            f"{pod}/ctr/memory.max": "1073741824\n",
            f"{pod}/ctr/memory.current": "104857600\n",
            f"{pod}/ctr/cpu.max": "400000 100000\n",
            "sys/devices/system/cpu/online": "0-7\n",
        },
    )
    cg = read_cgroup(root)
    assert cg.path == "/kubepods.slice/pod1/ctr"
    assert cg.memory_limit_bytes == 536870912  # the pod's limit binds the container
    assert cg.memory_usage_bytes == 104857600  # usage is the container's own
    assert cg.cpu_quota == 0.5
    assert usable_cpus(root) == 1


def test_cgroup_path_outside_the_mount_falls_back_to_its_top(tmp_path: Path) -> None:
    root = trees.container_v2(tmp_path)
    (root / "proc/self/cgroup").write_text("0::/docker/0123abcd\n")  # no cgroup namespace
    assert read_cgroup(root).memory_limit_bytes == 2147483648


def test_cgroup_v1(tmp_path: Path) -> None:
    mem, cpu = "sys/fs/cgroup/memory", "sys/fs/cgroup/cpu,cpuacct"
    root = trees.write(
        tmp_path,
        {
            "proc/self/cgroup": "12:pids:/docker/abc\n4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n"
            "1:name=systemd:/docker/abc\n0::/system.slice/docker.service\n",
            f"{mem}/memory.limit_in_bytes": "9223372036854771712\n",
            f"{mem}/docker/abc/memory.limit_in_bytes": "536870912\n",
            f"{mem}/docker/abc/memory.usage_in_bytes": "209715200\n",
            f"{mem}/docker/abc/memory.stat": "cache 1000\ntotal_inactive_file 104857600\n",
            f"{mem}/docker/abc/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
            f"{cpu}/cpu.cfs_quota_us": "-1\n",
            f"{cpu}/docker/abc/cpu.cfs_quota_us": "150000\n",
            f"{cpu}/docker/abc/cpu.cfs_period_us": "100000\n",
            "sys/devices/system/cpu/online": "0-15\n",
        },
    )
    cg = read_cgroup(root)
    assert (cg.version, cg.path) == (1, "/docker/abc")
    assert cg.memory_limit_bytes == 536870912
    assert cg.memory_usage_bytes == 209715200
    assert cg.memory_working_set_bytes == 104857600
    assert (cg.oom_events, cg.oom_kills) == (None, 2)
    assert cg.cpu_quota == 1.5
    assert usable_cpus(root) == 2


def test_cgroup_v1_unlimited(tmp_path: Path) -> None:
    root = trees.write(
        tmp_path,
        {
            "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
            "sys/fs/cgroup/memory/memory.usage_in_bytes": "2443096064\n",
            "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
            "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
            # hybrid host: an empty v2 mount next to the v1 controllers
            "sys/fs/cgroup/unified/cgroup.procs": "1\n",
        },
    )
    cg = read_cgroup(root)
    assert cg.version == 1
    assert (cg.memory_limit_bytes, cg.cpu_quota, cg.memory_usage_bytes) == (None, None, 2443096064)


def test_rk3588_big_little_by_capacity(tmp_path: Path) -> None:
    root = trees.rk3588(tmp_path)
    topo = read_topology(root)
    assert topo.heterogeneous
    assert (topo.big, topo.little) == ((4, 5, 6, 7), (0, 1, 2, 3))
    # core_id repeats across its three clusters (0-3, 0-1, 0-1): still 8 cores, 4 of them big.
    assert topo.physical_cores() == 8 and topo.physical_cores(topo.big) == 4
    cpu = read_cpuinfo(root)
    assert cpu.model == "Cortex-A55 + Cortex-A76"
    assert cpu.board == "Radxa ROCK 5B"
    assert usable_cpus(root) == 8
    assert default_threads(root) == 4  # the big cores only
    thermal = read_thermal(root)
    assert (thermal.cpu_temp_c, thermal.source) == (49.0, "bigcore0-thermal")
    assert read_cpufreq(root).cur_hz_mean == pytest.approx((1.8e9 + 2.256e9) / 2)


def test_big_little_by_max_frequency_without_capacity(tmp_path: Path) -> None:
    # An Intel hybrid laptop: P-cores 4.7 GHz, E-cores 3.6 GHz, no cpu_capacity in sysfs.
    root = trees.write(
        tmp_path,
        {
            "sys/devices/system/cpu/online": "0-11\n",
            **trees.cpus(4, max_khz=4_700_000),
            **trees.cpus(8, max_khz=3_600_000, first=4),
        },
    )
    topo = read_topology(root)
    assert topo.big == (0, 1, 2, 3) and topo.little == tuple(range(4, 12))
    # Turbo-boost "favoured cores" differ by a few percent: still one type.
    root2 = trees.write(
        tmp_path / "b",
        {
            "sys/devices/system/cpu/online": "0-3\n",
            **trees.cpus(2, max_khz=5_300_000),
            **trees.cpus(2, max_khz=5_100_000, first=2),
        },
    )
    assert not read_topology(root2).heterogeneous


def test_smt_siblings_count_once_for_threads(tmp_path: Path) -> None:
    files = {"sys/devices/system/cpu/online": "0-7\n", **trees.cpus(8)}
    for cpu in range(8):  # cpuN and cpuN+4 are hyperthreads of one core
        topology = f"sys/devices/system/cpu/cpu{cpu}/topology"
        files[f"{topology}/core_id"] = f"{cpu % 4}\n"
        files[f"{topology}/core_cpus_list"] = f"{cpu % 4},{cpu % 4 + 4}\n"
    root = trees.write(tmp_path, files)
    assert read_topology(root).physical_cores() == 4
    assert (usable_cpus(root), default_threads(root)) == (8, 4)
    for cpu in range(8):  # a kernel before 5.3: thread_siblings_list, core ids
        (root / f"sys/devices/system/cpu/cpu{cpu}/topology/core_cpus_list").unlink()
        (root / f"sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").unlink()
    assert read_topology(root).physical_cores() == 4


def test_arm64_cluster_ids_without_sibling_lists(tmp_path: Path) -> None:
    # An RK3588 on a kernel whose sysfs has cluster_id but no core_cpus_list.
    root = trees.rk3588(tmp_path)
    for cpu in range(8):
        (root / f"sys/devices/system/cpu/cpu{cpu}/topology/core_cpus_list").unlink()
        (root / f"sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").unlink()
    assert read_topology(root).physical_cores() == 8
    assert default_threads(root) == 4


def test_board_from_the_device_tree_before_the_soc_name(tmp_path: Path) -> None:
    root = trees.write(
        tmp_path,
        {
            "proc/cpuinfo": trees.PI3_ARMV7_CPUINFO,
            "proc/device-tree/model": "Raspberry Pi 3 Model B Rev 1.2\x00",
        },
    )
    cpu = read_cpuinfo(root)
    assert (cpu.board, cpu.model, cpu.arch) == (
        "Raspberry Pi 3 Model B Rev 1.2",
        "Cortex-A53",
        "arm",
    )
    (root / "proc/device-tree/model").unlink()
    assert read_cpuinfo(root).board == "BCM2835"  # nothing better to say


def test_raspberry_pi_on_a_distribution_kernel(tmp_path: Path) -> None:
    # Debian/Ubuntu kernels print no Model line: the device tree names the board.
    root = trees.raspberry_pi(tmp_path)
    cpuinfo = root / "proc/cpuinfo"
    cpuinfo.write_text(cpuinfo.read_text().split("Revision")[0])
    assert read_cpuinfo(root).board == "Raspberry Pi 5 Model B Rev 1.0"


def test_arm64_process_under_emulation_reads_hwcap(tmp_path: Path) -> None:
    # qemu-aarch64 on an x86 host: /proc/cpuinfo is the host's, the auxiliary vector is ours.
    root = trees.write(
        tmp_path,
        {
            "proc/cpuinfo": trees.XEON_CPUINFO,
            "proc/self/auxv": trees.auxv(*trees.QEMU_MAX_HWCAP),
            "sys/class/dmi/id/product_name": "Google Compute Engine\n",
        },
    )
    cpu = read_cpuinfo(root, machine="aarch64")
    assert (cpu.arch, cpu.emulated) == ("arm", True)
    assert {"neon", "fp16", "dotprod", "i8mm", "sve", "sve2", "bf16"} <= set(cpu.simd)
    assert not {"avx2", "avx512_vnni"} & set(cpu.simd)
    assert cpu.int8_dot == "i8mm"
    assert (cpu.model, cpu.board, cpu.mhz) == ("", "", None)  # the host's, not ours
    # An x86 process reads the same tree as before.
    x86 = read_cpuinfo(root, machine="x86_64")
    assert (x86.arch, x86.int8_dot, x86.emulated) == ("x86", "avx512_vnni", False)
    assert x86.board == "Google Compute Engine"


def test_arm64_process_on_an_arm64_kernel_keeps_cpuinfo(tmp_path: Path) -> None:
    root = trees.raspberry_pi(tmp_path)
    trees.write(root, {"proc/self/auxv": trees.auxv(*trees.QEMU_MAX_HWCAP)})
    cpu = read_cpuinfo(root, machine="aarch64")
    assert (cpu.model, cpu.emulated, cpu.int8_dot) == ("Cortex-A76", False, "dotprod")
    pi5 = trees.auxv(0x119FFF)  # fp..asimdrdm, lrcpc, dcpop, asimddp: a Cortex-A76
    (root / "proc/cpuinfo").unlink()  # a container that hides /proc/cpuinfo
    trees.write(root, {"proc/self/auxv": pi5})
    hidden = read_cpuinfo(root, machine="aarch64")
    assert (hidden.arch, hidden.int8_dot, hidden.emulated) == ("arm", "dotprod", False)
    assert "i8mm" not in hidden.simd


def test_bare_vm_reports_unknown_without_crashing(tmp_path: Path) -> None:
    root = trees.bare_vm(tmp_path)
    assert read_thermal(root).cpu_temp_c is None and read_thermal(root).zones == ()
    freq = read_cpufreq(root)
    assert freq.cores == () and freq.cur_hz_mean is None and freq.max_hz is None
    assert freq.throttled_now is None
    assert read_cgroup(root) == Cgroup()
    assert read_topology(root) == Topology()
    assert usable_cpus(root) == 2  # no sysfs: counted from /proc/cpuinfo
    r = read_readings(root)
    assert r.temp_c is None and r.cgroup_memory_limit_bytes is None
    assert r.memory_limit_bytes == 2_000_000 * 1024
    cpu = read_cpuinfo(root)
    assert cpu.int8_dot == "" and "avx2" in cpu.simd


def test_empty_root(tmp_path: Path) -> None:
    r = read_readings(tmp_path / "does-not-exist")
    assert r == type(r)()  # all unknown
    assert read_cpuinfo(tmp_path).model == ""
    assert usable_cpus(tmp_path) == 1 and default_threads(tmp_path) == 1


def test_malformed_and_unreadable_files(tmp_path: Path) -> None:
    tz = "sys/class/thermal"
    root = trees.write(
        tmp_path,
        {
            f"{tz}/thermal_zone0/temp": "garbage\n",
            f"{tz}/thermal_zone0/type": "cpu-thermal\n",
            f"{tz}/thermal_zone1/temp": "",
            f"{tz}/thermal_zone3/type": "x86_pkg_temp\n",
            f"{tz}/thermal_zone4/temp": "-273150\n",  # a disabled sensor
            f"{tz}/thermal_zone4/type": "cpu-thermal\n",
            f"{tz}/thermal_zone5/temp": "45000\n",
            f"{tz}/thermal_zone5/type": "acpitz\n",
            "sys/devices/system/cpu/online": "3-1\n",  # malformed: fall back to the directories
            "sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq": "abc\n",
            "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq": "\n",
            "sys/devices/system/cpu/cpu1/cpu_capacity": "big\n",
            "sys/fs/cgroup/memory.max": "lots\n",
            "sys/fs/cgroup/cpu.max": "200000\n",  # one field
            "sys/fs/cgroup/memory.events": "oom\noom_kill many\n",
            "proc/self/cgroup": "::::\n0::relative/path\n",
            "proc/meminfo": "MemTotal: lots kB\nMemAvailable:\n",
        },
    )
    (root / f"{tz}/thermal_zone2/temp").mkdir(parents=True)  # a directory where a file should be
    (root / f"{tz}/thermal_zone3/temp").symlink_to(root / "nowhere")  # broken symlink: OSError
    (root / "sys/fs/cgroup/memory.current").mkdir()
    (root / "proc/cpuinfo").write_bytes(b"\xff\xfe\x00\nflags\t: avx2 \x80\xfe\n")  # not UTF-8
    thermal = read_thermal(root)
    assert (thermal.cpu_temp_c, thermal.source) == (45.0, "acpitz")  # the only sane reading
    assert read_cpufreq(root).cores == ()
    topo = read_topology(root)
    assert topo.online == (0, 1) and not topo.heterogeneous
    cg = read_cgroup(root)
    assert cg.version == 2 and cg == Cgroup(version=2, path="/")
    assert read_meminfo(root) == read_meminfo(tmp_path / "nothing")
    assert read_cpuinfo(root).simd == ("avx2",)  # decoded with replacement characters
    r = read_readings(root)  # the composition keeps the sane reading and nothing else
    assert r.temp_c == 45.0 and r.cgroup_memory_limit_bytes is None


def test_mode_000_file(tmp_path: Path) -> None:
    root = trees.raspberry_pi(tmp_path)
    temp = root / "sys/class/thermal/thermal_zone0/temp"
    temp.chmod(0)
    try:
        expected = 61.234 if os.geteuid() == 0 else None  # root reads through mode 000
        assert read_thermal(root).cpu_temp_c == (pytest.approx(expected) if expected else None)
    finally:
        temp.chmod(0o644)


_PINNED = """
import os
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from edgeinfer.hardware import default_threads, usable_cpus
print(usable_cpus(), default_threads())
"""


def test_real_machine_does_not_raise() -> None:
    r = read_readings("/")
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert r.memory_limit_bytes is not None and 0 < r.memory_limit_bytes <= physical
    assert usable_cpus() <= len(os.sched_getaffinity(0))
    assert default_threads() <= usable_cpus()
    # Pinned to one CPU, a process may keep only that one busy, and says so.
    pinned = subprocess.run(
        [sys.executable, "-c", _PINNED],
        capture_output=True,
        text=True,
        check=True,
    )
    assert pinned.stdout.split() == ["1", "1"]
