"""The tuning search, pruning, checkpoint/resume and report on a fake measurer (deterministic
numbers) and a fake clock: no model runs here."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from edgeinfer.tune import report
from edgeinfer.tune.run import stages
from edgeinfer.tune.search import DEFAULT_KEY, Checkpoint, Objective, Search, Trial
from edgeinfer.tune.space import (
    Candidate,
    Device,
    ModelFacts,
    everything,
    refine,
    thread_splits,
    why_pruned,
)

FACTS = ModelFacts(
    frozenset({"model.onnx"}), batch_axis=True, bytes_per_instance=10 << 20, can_calibrate=True
)
DEVICE = Device(usable_cpus=4, memory_budget_bytes=1 << 30)


def speed(c: Candidate | None) -> float:
    """A made-up device: threads and instances both help up to 4 CPUs, batching helps a lot,
    INT8 doubles, batch 16 is the sweet spot."""
    if c is None:
        return 100.0
    tput = 100.0 * c.threads * c.instances**1.1
    if c.max_batch_size:
        tput *= 2.0 - abs(c.max_batch_size - 16) / 32
    return tput * (2.0 if c.precision.startswith("int8") else 1.0)


class FakeMeasurer:
    def __init__(
        self, clock: list[float], per_trial_s: float = 10.0, crash_after: int | None = None
    ) -> None:
        self.clock, self.per_trial_s, self.crash_after = clock, per_trial_s, crash_after
        self.measured: list[str] = []

    def __call__(self, c: Candidate | None) -> Trial:
        if self.crash_after is not None and len(self.measured) >= self.crash_after:
            raise KeyboardInterrupt  # the process is killed between two trials
        self.clock[0] += self.per_trial_s
        key = DEFAULT_KEY if c is None else c.key
        self.measured.append(key)
        tput = speed(c)
        levels = [
            {
                "concurrency": k,
                "throughput": tput * min(k, 4) / 4,
                "spread": 0.02,
                "p50_ms": 1000 * k / tput,
                "p99_ms": 1500 * k / tput,
                "requests": 100,
            }
            for k in (1, 8)
        ]
        return Trial(key, None if c is None else c.as_dict(), "ok", levels)


def search(
    tmp: Path,
    measurer: FakeMeasurer,
    clock: list[float],
    budget_s: float = 1e9,
    settings: dict | None = None,
) -> Search:
    kept, _ = everything(DEVICE, FACTS, ["onnxruntime"], ["fp32", "int8-dynamic"])
    objective = Objective("throughput", None, (1, 8))
    return Search(
        measurer,
        objective,
        Checkpoint(tmp / "checkpoint.json", settings or {"a": 1}),
        budget_s,
        stages(kept, objective, DEVICE, FACTS),
        clock=lambda: clock[0],
    )


def test_thread_splits_never_oversubscribe() -> None:
    assert thread_splits(2) == [(1, 1), (1, 2), (2, 1)]
    assert all(t * i <= 6 for t, i in thread_splits(6)) and (6, 1) in thread_splits(6)


@pytest.mark.parametrize(
    ("candidate", "facts", "device", "reason"),
    [
        (Candidate(threads=8), FACTS, DEVICE, "8 threads > 4 usable CPUs"),
        (Candidate(threads=2, instances=4), FACTS, DEVICE, "oversubscribe 4 CPUs"),
        (Candidate(max_batch_size=8), replace(FACTS, batch_axis=False), DEVICE, "no batch axis"),
        (
            Candidate(precision="int8-static"),
            replace(FACTS, can_calibrate=False),
            DEVICE,
            "needs calibration data",
        ),
        (Candidate(instances=4), FACTS, Device(4, 30 << 20), "over the 30 MB memory budget"),
        (Candidate(backend="litert"), FACTS, DEVICE, "litert"),
        (Candidate(backend="tensorrt"), FACTS, DEVICE, "no tensorrt backend"),
    ],
)
def test_candidates_the_device_cannot_run_are_pruned_with_the_reason(
    candidate: Candidate, facts: ModelFacts, device: Device, reason: str
) -> None:
    assert reason in why_pruned(candidate, device, facts)


def test_the_report_lists_what_was_pruned_and_why() -> None:
    kept, pruned = everything(
        Device(2), replace(FACTS, can_calibrate=False), ["onnxruntime"], ["fp32", "int8-static"]
    )
    assert kept and all(c.precision == "fp32" for c in kept)
    assert {p.reason for p in pruned} == {
        "int8-static needs calibration data (--eval or --calibration)"
    }


def test_search_measures_the_default_first_and_finds_the_fastest(tmp_path: Path) -> None:
    clock = [0.0]
    m = FakeMeasurer(clock)
    trials = search(tmp_path, m, clock).run()
    assert m.measured[0] == DEFAULT_KEY
    decision = report.decide(trials, Objective("throughput", None, (1, 8)))
    assert decision["changed"]
    best = Candidate(**decision["candidate"])
    # INT8, all four CPUs in use, and batching refined from 8 to the sweet spot 16.
    assert best.precision == "int8-dynamic" and best.threads * best.instances == 4
    assert best.max_batch_size == 16
    counts = Counter(m.measured)
    # Each candidate once; the default and the two best twice more (the confirmation round).
    assert sorted(counts.values()) == [1] * (len(counts) - 3) + [3, 3, 3]
    assert counts[DEFAULT_KEY] == 3 and counts[best.key] == 3


def test_the_budget_stops_new_trials_and_says_what_was_skipped(tmp_path: Path) -> None:
    clock = [0.0]
    m = FakeMeasurer(clock, per_trial_s=10.0)
    s = search(tmp_path, m, clock, budget_s=25.0)
    s.run()
    assert len(set(m.measured)) == 3  # started at 0, 10 and 20 s; not at 30 s
    assert s.skipped


def test_a_killed_run_resumes_where_it_stopped(tmp_path: Path) -> None:
    clock = [0.0]
    first = FakeMeasurer(clock, crash_after=4)
    with pytest.raises(KeyboardInterrupt):
        search(tmp_path, first, clock).run()
    saved = json.loads((tmp_path / "checkpoint.json").read_text())
    assert [t["key"] for t in saved["trials"]] == first.measured  # every trial was saved
    second = FakeMeasurer(clock)
    search(tmp_path, second, clock).run()
    fresh = FakeMeasurer([0.0])
    search(tmp_path / "fresh", fresh, [0.0]).run()
    # Only the confirmation round measures a trial of the first run again.
    assert Counter(first.measured + second.measured) == Counter(fresh.measured)


def test_a_lucky_first_measurement_does_not_pick_the_winner(tmp_path: Path) -> None:
    clock = [0.0]

    class Lucky(FakeMeasurer):
        def __call__(self, c: Candidate | None) -> Trial:
            trial = super().__call__(c)
            lucky = c is not None and c.key == Candidate(precision="fp32").key
            if lucky and self.measured.count(c.key) == 1:  # c is not None here
                for lv in trial.levels:
                    lv["throughput"] *= 100
            return trial

    trials = search(tmp_path, Lucky(clock), clock).run()
    decision = report.decide(trials, Objective("throughput", None, (1, 8)))
    assert (
        Candidate(**decision["candidate"]).threads * Candidate(**decision["candidate"]).instances
        == 4
    )


def test_a_checkpoint_of_other_settings_is_not_reused(tmp_path: Path) -> None:
    clock = [0.0]
    search(tmp_path, FakeMeasurer(clock), clock, settings={"a": 1}).run()
    again = FakeMeasurer(clock)
    search(tmp_path, again, clock, settings={"a": 2}).run()
    assert again.measured[0] == DEFAULT_KEY


def _corrupt(saved: dict, how: str) -> object:
    trials = saved["trials"]
    if how == "list":
        return []
    if how == "string":
        return "x"
    if how == "unknown field":
        trials[0]["bogus"] = 1
    elif how == "levels not a list":
        trials[1]["levels"] = "zzz"
    elif how == "candidate of other fields":
        trials[1]["candidate"] = {"nope": 1}
    elif how == "throughput not a number":
        trials[1]["levels"][0]["throughput"] = "fast"
    elif how == "no trials":
        del saved["trials"]
    return saved


@pytest.mark.parametrize(
    "how",
    [
        "list",
        "string",
        "unknown field",
        "levels not a list",
        "candidate of other fields",
        "throughput not a number",
        "no trials",
    ],
)
def test_a_corrupted_checkpoint_starts_over(tmp_path: Path, how: str) -> None:
    clock = [0.0]
    search(tmp_path, FakeMeasurer(clock), clock).run()
    path = tmp_path / "checkpoint.json"
    path.write_text(json.dumps(_corrupt(json.loads(path.read_text()), how)))
    again = FakeMeasurer(clock)
    trials = search(tmp_path, again, clock).run()
    assert again.measured[0] == DEFAULT_KEY  # measured again, not read back
    assert all(t.status == "ok" for t in trials.values())


def _trial(key: str, tput: float, spread: float = 0.02, status: str = "ok") -> Trial:
    c = None if key == DEFAULT_KEY else Candidate(threads=int(key)).as_dict()
    return Trial(
        key,
        c,
        status,
        [
            {
                "concurrency": 8,
                "throughput": tput,
                "spread": spread,
                "p50_ms": 8000 / tput,
                "p99_ms": 12000 / tput,
                "requests": 10,
            }
        ],
    )


def test_a_gain_within_the_noise_changes_nothing() -> None:
    objective = Objective("throughput", None, (8,))
    trials = {DEFAULT_KEY: _trial(DEFAULT_KEY, 100.0, spread=0.10), "2": _trial("2", 108.0)}
    decision = report.decide(trials, objective)
    assert not decision["changed"] and "noise" in decision["why"]
    trials["2"] = _trial("2", 150.0)
    decision = report.decide(trials, objective)
    assert decision["changed"] and decision["gain"] == pytest.approx(1.5)
    assert "1.50x the default's throughput" in report.summary_line(decision, objective)


def test_rejected_trials_never_win_and_the_latency_budget_counts() -> None:
    objective = Objective("throughput", 50.0, (8,))
    trials = {
        DEFAULT_KEY: _trial(DEFAULT_KEY, 300.0),
        "2": _trial("2", 900.0, status="rejected"),
        "4": _trial("4", 200.0),
    }
    # p99 = 12000 / tput ms: the default (40 ms) is within the budget, "4" (60 ms) is not.
    assert objective.score(trials["4"]) is None
    assert not report.decide(trials, objective)["changed"]


def test_report_files_show_every_trial_the_frontier_and_the_pruned(tmp_path: Path) -> None:
    objective = Objective("throughput", None, (8,))
    trials = {
        DEFAULT_KEY: _trial(DEFAULT_KEY, 100.0),
        "2": _trial("2", 190.0),
        "3": _trial("3", 150.0),
    }
    trials["3"].levels[0]["p99_ms"] = 500.0  # slower and less throughput than "2": dominated
    decision = report.decide(trials, objective)
    md = report.write(tmp_path, trials, [("x", "why not")], objective, decision, {"model": "m"})
    body = json.loads((tmp_path / "report.json").read_text())
    assert [t["key"] for t in body["trials"]] == [DEFAULT_KEY, "2", "3"]
    assert body["frontier"] == [trials["2"].key]  # the default is dominated by "2" too
    text = md.read_text()
    assert "1.90x the default's throughput" in text and "- x: why not" in text
    svg = (tmp_path / "frontier.svg").read_text()
    assert svg.count("<circle") == 3 and "<polyline" in svg


def test_refinement_stays_within_bounds() -> None:
    best = Candidate(max_batch_size=64, max_queue_delay_us=16_000)
    assert all(
        c.max_batch_size <= 64 and c.max_queue_delay_us <= 16_000
        for c in refine(best, DEVICE, FACTS)
    )
    assert refine(Candidate(), DEVICE, FACTS) == []


class FakeServer(FakeMeasurer):
    """Serving over HTTP costs 1 ms per request on top of the in-process time; the `slow`
    candidate costs 20 ms more (its threads leave no core for the HTTP work, say), and the
    `broken` one cannot be served."""

    def __init__(self, clock: list[float], slow: str = "", broken: str = "") -> None:
        super().__init__(clock)
        self.slow, self.broken = slow, broken

    def __call__(self, c: Candidate | None) -> Trial:
        trial = super().__call__(c)
        if trial.key == self.broken:
            return Trial(trial.key, trial.candidate, "error", error="over HTTP: exited (1)")
        cost = 1e-3 + (20e-3 if trial.key == self.slow else 0.0)
        for lv in trial.levels:
            lv["throughput"] = 1.0 / (1.0 / lv["throughput"] + cost)
        trial.served = True
        return trial


def best_in_process(tmp: Path) -> str:
    clock = [0.0]
    trials = search(tmp, FakeMeasurer(clock), clock).run()
    return str(report.decide(trials, Objective("throughput", None, (1, 8)))["winner"])


def served_search(tmp: Path, server: FakeServer) -> Search:
    s = search(tmp, FakeMeasurer(server.clock), server.clock)
    s.serve = server
    return s


def test_the_best_are_confirmed_over_http_and_the_winner_is_picked_as_served(
    tmp_path: Path,
) -> None:
    fastest = best_in_process(tmp_path / "a")
    server = FakeServer([0.0], slow=fastest)
    trials = served_search(tmp_path / "b", server).run()
    served = {k: t for k, t in trials.items() if t.served}
    # The default and the two best, each served twice (two interleaved rounds).
    assert Counter(server.measured) == Counter({k: 2 for k in served})
    assert DEFAULT_KEY in served and fastest in served and len(served) == 3
    for t in served.values():
        assert t.confirmed and t.in_process and t.in_process != t.levels
    decision = report.decide(trials, Objective("throughput", None, (1, 8)))
    # Picked on the served figures: the fastest in-process is the slowest served.
    assert decision["winner"] != fastest and trials[decision["winner"]].served
    assert "served over HTTP" in report.summary_line(decision, Objective())
    md = report.markdown(
        {"summary": "", "pruned": []}, trials, Objective("throughput", None, (1, 8))
    )
    assert "| HTTP |" in md and "| in-process |" in md


def test_a_candidate_that_cannot_be_served_cannot_win(tmp_path: Path) -> None:
    fastest = best_in_process(tmp_path / "a")
    trials = served_search(tmp_path / "b", FakeServer([0.0], broken=fastest)).run()
    assert trials[fastest].status == "error" and "over HTTP" in trials[fastest].error
    decision = report.decide(trials, Objective("throughput", None, (1, 8)))
    assert decision["changed"] and decision["winner"] not in (fastest, DEFAULT_KEY)


def test_the_search_leaves_the_confirmation_its_time(tmp_path: Path) -> None:
    clock = [0.0]
    measurer = FakeMeasurer(clock, per_trial_s=10.0)
    s = search(tmp_path, measurer, clock, budget_s=55.0)
    s.reserve_s = 30.0
    s.run()
    assert len(set(measurer.measured)) == 3  # started at 0, 10 and 20 s; not at 30 s
