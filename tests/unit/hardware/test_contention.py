"""CPU pressure readings and the thread count that follows them (a fake clock and pressure)."""

from __future__ import annotations

from pathlib import Path

from edgeinfer.hardware.contention import ThreadGovernor, read_cpu_pressure


def test_reads_some_avg10_and_none_without_psi(tmp_path: Path) -> None:
    psi = tmp_path / "proc" / "pressure" / "cpu"
    assert read_cpu_pressure(tmp_path) is None
    psi.parent.mkdir(parents=True)
    psi.write_text("some avg10=99.43 avg60=99.31 avg300=99.31 total=2205968513\n"
                   "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")  # fmt: skip
    assert read_cpu_pressure(tmp_path) == 99.43
    psi.write_text("garbage\n")
    assert read_cpu_pressure(tmp_path) is None


def test_one_thread_under_pressure_all_when_it_clears_with_hysteresis() -> None:
    now, pressure = [0.0], [0.0]
    gov = ThreadGovernor(4, read=lambda: pressure[0], clock=lambda: now[0], interval=2.0)
    assert gov.threads() == 4
    pressure[0] = 60.0
    assert gov.threads() == 4  # read at most every 2 s
    now[0] = 2.0
    assert gov.threads() == 1
    for p, expected in ((18.0, 1), (9.0, 4), (18.0, 4), (30.0, 1)):  # between: unchanged
        pressure[0] = p
        now[0] += 2.0
        assert gov.threads() == expected, p


def test_without_psi_or_with_one_thread_nothing_changes() -> None:
    assert ThreadGovernor(2, read=lambda: None, clock=lambda: 0.0).threads() == 2
    calls: list[int] = []
    one = ThreadGovernor(1, read=lambda: calls.append(1) or 99.0, clock=lambda: 0.0)
    assert one.threads() == 1 and calls == []
