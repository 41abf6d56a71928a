"""Thermal zones, CPU frequencies, throttling and core types from sysfs under an injectable root.

Every reader returns a frozen snapshot; what a device does not expose is None/empty, never an
exception (a VM has no thermal zones, a container often has no cpufreq).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgeinfer.hardware._read import (
    cpu_dirs,
    parse_cpu_list,
    read_int,
    read_text,
    under,
)

Root = str | os.PathLike[str]

# Thermal zone types that measure the CPU, by lower-case prefix: Raspberry Pi "cpu-thermal",
# Jetson "cpu-thermal"/"CPU-therm", Intel "x86_pkg_temp", Amlogic "soc_thermal", Rockchip RK3588
# "soc-thermal"/"bigcore0-thermal"/"littlecore-thermal".
_CPU_ZONE_PREFIXES = ("cpu", "x86_pkg_temp", "soc", "bigcore", "littlecore")
# hwmon drivers that report the CPU (AMD machines often have no CPU thermal zone at all).
_CPU_HWMON_NAMES = frozenset({"coretemp", "k10temp", "zenpower", "cpu_thermal"})
# Readings outside this range are disabled or broken sensors (some report -273 or 0x7fffffff).
_PLAUSIBLE_C = (-40.0, 150.0)


# ---- temperature ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ThermalZone:
    name: str  # "thermal_zone0", or "hwmon1/temp1" for hwmon sensors
    type: str  # "cpu-thermal", "x86_pkg_temp", "k10temp", ...
    temp_c: float

    @property
    def is_cpu(self) -> bool:
        return self.type.lower().startswith(_CPU_ZONE_PREFIXES) or self.name.startswith("hwmon")


@dataclass(frozen=True)
class Thermal:
    zones: tuple[ThermalZone, ...] = ()
    cpu_temp_c: float | None = None  # hottest CPU-like zone, else hottest zone; None: no sensor
    source: str = ""  # the type of the zone cpu_temp_c came from


def _millidegrees(path: Path) -> float | None:
    raw = read_int(path)
    if raw is None:
        return None
    celsius = raw / 1000.0
    lo, hi = _PLAUSIBLE_C
    return celsius if lo <= celsius <= hi else None


def read_thermal(root: Root = "/") -> Thermal:
    zones: list[ThermalZone] = []
    for zone in sorted(under(root, "/sys/class/thermal").glob("thermal_zone*")):
        temp = _millidegrees(zone / "temp")
        if temp is not None:
            zones.append(ThermalZone(zone.name, read_text(zone / "type") or "", temp))
    for hwmon in sorted(under(root, "/sys/class/hwmon").glob("hwmon*")):
        name = read_text(hwmon / "name") or ""
        if name not in _CPU_HWMON_NAMES:
            continue
        for sensor in sorted(hwmon.glob("temp*_input")):
            temp = _millidegrees(sensor)
            if temp is not None:
                zones.append(ThermalZone(f"{hwmon.name}/{sensor.name[:-6]}", name, temp))
    if not zones:
        return Thermal()
    candidates = [z for z in zones if z.is_cpu] or zones
    hottest = max(candidates, key=lambda z: z.temp_c)
    return Thermal(tuple(zones), hottest.temp_c, hottest.type)


# ---- frequency and throttling ---------------------------------------------------------------
# Raspberry Pi firmware `get_throttled` bits: now (0-3) and since boot (16-19).
_RPI_BITS = {
    0: "under-voltage",
    1: "arm-frequency-capped",
    2: "throttled",
    3: "soft-temperature-limit",
    16: "under-voltage-occurred",
    17: "arm-frequency-capped-occurred",
    18: "throttled-occurred",
    19: "soft-temperature-limit-occurred",
}
_RPI_THROTTLED_FILES = (
    "/sys/devices/platform/soc/soc:firmware/get_throttled",
    "/sys/devices/platform/soc/soc:firmware/raspberrypi-hwmon/get_throttled",
)


@dataclass(frozen=True)
class CoreFreq:
    cpu: int
    cur_khz: int | None = None  # scaling_cur_freq
    max_khz: int | None = None  # cpuinfo_max_freq (the hardware's maximum)
    throttle_count: int | None = None  # thermal_throttle/core_throttle_count (x86)


@dataclass(frozen=True)
class CpuFreq:
    cores: tuple[CoreFreq, ...] = ()
    rpi_throttled: int | None = None  # Raspberry Pi firmware bitmask; None: not a Pi / hidden
    under_voltage: bool | None = None  # hwmon rpi_volt in0_lcrit_alarm (newer Pi kernels)

    @property
    def cur_hz_mean(self) -> float | None:
        vals = [c.cur_khz for c in self.cores if c.cur_khz is not None]
        return 1000.0 * sum(vals) / len(vals) if vals else None

    @property
    def max_hz(self) -> float | None:
        vals = [c.max_khz for c in self.cores if c.max_khz is not None]
        return 1000.0 * max(vals) if vals else None

    @property
    def throttle_count(self) -> int | None:
        vals = [c.throttle_count for c in self.cores if c.throttle_count is not None]
        return sum(vals) if vals else None

    @property
    def throttle_flags(self) -> tuple[str, ...]:
        """Decoded Raspberry Pi flags, e.g. ("throttled", "under-voltage-occurred")."""
        flags = (
            []
            if self.rpi_throttled is None
            else [name for bit, name in _RPI_BITS.items() if self.rpi_throttled >> bit & 1]
        )
        if self.under_voltage and "under-voltage" not in flags:
            flags.insert(0, "under-voltage")
        return tuple(flags)

    @property
    def throttled_now(self) -> bool | None:
        """True when firmware is capping the clock or voltage now; None when nothing says."""
        if self.rpi_throttled is None and self.under_voltage is None:
            return None
        return bool((self.rpi_throttled or 0) & 0xF) or bool(self.under_voltage)


def _read_rpi_throttled(root: Root) -> int | None:
    paths = [under(root, p) for p in _RPI_THROTTLED_FILES]
    # Pi 5 kernels name the SoC node by address ("soc@107c000000").
    paths += sorted(under(root, "/sys/devices/platform").glob("soc*/*firmware/get_throttled"))
    for path in paths:
        text = read_text(path)
        if text is None:
            continue
        text = text.removeprefix("throttled=")  # vcgencmd format, for hand-made trees
        try:
            return int(text, 16)
        except ValueError:
            continue
    return None


def _read_rpi_under_voltage(root: Root) -> bool | None:
    for hwmon in sorted(under(root, "/sys/class/hwmon").glob("hwmon*")):
        if read_text(hwmon / "name") == "rpi_volt":
            alarm = read_int(hwmon / "in0_lcrit_alarm")
            return None if alarm is None else alarm != 0
    return None


def read_cpufreq(root: Root = "/") -> CpuFreq:
    online = set(read_online_cpus(root))
    cores = []
    for cpu, d in cpu_dirs(root).items():
        if online and cpu not in online:
            continue
        core = CoreFreq(
            cpu,
            read_int(d / "cpufreq" / "scaling_cur_freq"),
            read_int(d / "cpufreq" / "cpuinfo_max_freq"),
            read_int(d / "thermal_throttle" / "core_throttle_count"),
        )
        if (core.cur_khz, core.max_khz, core.throttle_count) != (None, None, None):
            cores.append(core)
    return CpuFreq(tuple(cores), _read_rpi_throttled(root), _read_rpi_under_voltage(root))


# ---- topology: online CPUs, physical cores, big/LITTLE ---------------------------------------
# A CPU is "big" when its capacity (or max frequency) is within this fraction of the fastest:
# Cortex-X + A7x both count as big over A5x; Intel P-cores over E-cores (~0.75 of the clock).
_BIG_FRACTION = 0.8


@dataclass(frozen=True)
class Core:
    cpu: int
    capacity: int | None = None  # cpu_capacity (arm64: 1024 = the fastest core)
    max_khz: int | None = None
    core_id: int | None = None  # arm64: numbered within its cluster, not unique on the chip
    package_id: int | None = None
    # The hardware threads of this CPU's core (core_cpus_list, or thread_siblings_list on
    # kernels before 5.3): the one source that names a physical core on every architecture.
    siblings: tuple[int, ...] | None = None
    cluster_id: int | None = None  # arm64 kernels >= 5.16


@dataclass(frozen=True)
class Topology:
    online: tuple[int, ...] = ()  # empty: unknown
    cores: tuple[Core, ...] = ()
    big: tuple[int, ...] = ()  # the fast CPUs; all online CPUs when the cores are uniform
    little: tuple[int, ...] = ()  # empty unless the cores differ

    @property
    def heterogeneous(self) -> bool:
        return bool(self.little)

    def physical_cores(self, cpus: tuple[int, ...] | None = None) -> int | None:
        """Physical cores among `cpus` (default: online); None if sysfs hides it.

        Counted by sibling sets; without them by (package, cluster, core) ids. core_id alone
        repeats across arm64 clusters: an RK3588 numbers its A55s 0-3 and each pair of A76s 0-1,
        all in package 0, so (package, core) would count its 4 big cores as 2.
        """
        wanted = [c for c in self.cores if c.cpu in set(self.online if cpus is None else cpus)]
        if not wanted:
            return None
        if all(c.siblings for c in wanted):
            return len({c.siblings for c in wanted})
        if all(c.core_id is not None for c in wanted):
            return len({(c.package_id, c.cluster_id, c.core_id) for c in wanted})
        return None


def read_online_cpus(root: Root = "/") -> tuple[int, ...]:
    """Online CPU numbers from `cpu/online`, else the cpuN directories; () when unknown."""
    listed = parse_cpu_list(read_text(under(root, "/sys/devices/system/cpu/online")))
    if listed:
        return listed
    # cpu0 usually has no `online` file: it cannot be taken offline.
    return tuple(cpu for cpu, d in cpu_dirs(root).items() if read_int(d / "online") != 0)


def _speed_classes(values: dict[int, int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if len(values) < 2 or len(set(values.values())) < 2:
        return tuple(sorted(values)), ()
    fastest = max(values.values())
    big = tuple(sorted(c for c, v in values.items() if v >= _BIG_FRACTION * fastest))
    little = tuple(sorted(c for c, v in values.items() if v < _BIG_FRACTION * fastest))
    return big, little


def _core(cpu: int, d: Path) -> Core:
    topo = d / "topology"
    siblings = parse_cpu_list(read_text(topo / "core_cpus_list"))
    if not siblings:
        siblings = parse_cpu_list(read_text(topo / "thread_siblings_list"))
    return Core(
        cpu,
        read_int(d / "cpu_capacity"),
        read_int(d / "cpufreq" / "cpuinfo_max_freq"),
        read_int(topo / "core_id"),
        read_int(topo / "physical_package_id"),
        siblings or None,
        read_int(topo / "cluster_id"),
    )


def read_topology(root: Root = "/") -> Topology:
    online = read_online_cpus(root)
    dirs = cpu_dirs(root)
    cores = tuple(_core(cpu, dirs[cpu]) for cpu in online if cpu in dirs)
    capacity = {c.cpu: c.capacity for c in cores if c.capacity}
    max_khz = {c.cpu: c.max_khz for c in cores if c.max_khz}
    # Prefer cpu_capacity: it is what the scheduler uses and it is set even when cpufreq is not.
    speeds = capacity if len(capacity) == len(cores) else max_khz
    if len(speeds) != len(cores) or not cores:
        return Topology(online, cores, online, ())
    big, little = _speed_classes(speeds)
    return Topology(online, cores, big, little)
