import json

import pytest

from edgeinfer.registry.desired import Canary, DesiredError, DesiredModel, FileSource
from edgeinfer.registry.etcd import Compacted, EtcdError, _watch_batch, prefix_end
from edgeinfer.registry.rollout import canary_counts, halt_reason
from edgeinfer.registry.source import LocalRegistry, RegistryError, open_registry, parse_url

SHA = "ab" * 32


def test_desired_state_round_trips_through_json() -> None:
    want = DesiredModel(
        2, Canary(3, 0.1), {3: {"model.onnx": FileSource("https://h/m.onnx", SHA)}},
        adapters={"bot": ("acme",)}, max_error_rate=0.1, min_requests=5, previous=1,
        config="max_batch_size = 8\n",
    )  # fmt: skip
    again = DesiredModel.from_json(json.loads(json.dumps(want.to_json())))
    assert again == want
    assert want.wanted_versions() == [2, 3]
    halted = want.with_changes(halted="too many errors")
    assert halted.active_canary is None and halted.wanted_versions() == [2]


@pytest.mark.parametrize(
    "doc, words",
    [
        ({}, "version"),
        ({"version": 0}, "version must be >= 1"),
        ({"version": 1, "canary": {"version": 2, "weight": 1.5}}, "weight"),
        ({"version": 1, "artifacts": {"1": {"../x": {"url": "/a", "sha256": SHA}}}}, "file name"),
        ({"version": 1, "artifacts": {"1": {"m.onnx": {"url": "/a", "sha256": "abc"}}}}, "64 hex"),
        ({"version": 1, "max_error_rate": 2}, "max_error_rate"),
        ([1, 2], "JSON object"),
    ],
)
def test_malformed_desired_state_says_what_is_wrong(doc: object, words: str) -> None:
    with pytest.raises(DesiredError, match=words):
        DesiredModel.from_json(doc)


def _status(group: str, requests: int, errors: int, version: str = "3") -> dict:
    return {"group": group,
            "models": {"m": {"versions": {version: {"requests": requests, "errors": errors}}}}}  # fmt: skip


def test_canary_error_rate_adds_up_reporting_devices_of_the_group() -> None:
    want = DesiredModel(2, Canary(3, 0.1), max_error_rate=0.1, min_requests=20)
    statuses = {"a": _status("g", 10, 1), "b": _status("g", 15, 1), "c": _status("other", 99, 99),
                "d": _status("g", 50, 50, version="2")}  # fmt: skip
    assert canary_counts(statuses, "g", "m", 3) == (25, 2, 2)
    assert halt_reason(want, statuses, "g", "m") is None  # 8 % <= 10 %
    statuses["b"] = _status("g", 15, 3)
    reason = halt_reason(want, statuses, "g", "m")
    assert reason is not None and "4/25 = 16.0%" in reason and "2 device(s)" in reason
    # Too few requests to judge; no canary; already halted: no halt.
    assert halt_reason(want.with_changes(min_requests=100), statuses, "g", "m") is None
    assert halt_reason(want.with_changes(canary=None), statuses, "g", "m") is None
    assert halt_reason(want.with_changes(halted="x"), statuses, "g", "m") is None


def test_registry_urls() -> None:
    assert parse_url("etcd://10.0.0.5:2379/fleet") == ("http://10.0.0.5:2379", "/fleet", 10)
    assert parse_url("etcd://h/a/b/?ttl=4") == ("http://h:2379", "/a/b", 4)
    assert parse_url("etcd://h:1") == ("http://h:1", "/edgeinfer", 10)
    for bad in ("http://h:2379/x", "etcd:///x", "etcd://h/x?ttl=1"):
        with pytest.raises(ValueError):
            parse_url(bad)
    assert isinstance(open_registry(""), LocalRegistry)


def test_local_registry_is_a_no_op_source() -> None:
    import asyncio

    async def go() -> None:
        reg = LocalRegistry()
        assert (await reg.snapshot("g")).models == {}
        await reg.report("d", {"x": 1})
        assert await reg.statuses() == {}
        with pytest.raises(RegistryError, match="--registry"):
            await reg.write("g", "m", DesiredModel(1))

    asyncio.run(go())


def test_watch_responses_from_the_json_gateway() -> None:
    key = "L3AvbQ=="  # base64("/p/m")
    batch = _watch_batch({"result": {"header": {"revision": "7"}, "events": [
        {"kv": {"key": key, "value": "e30=", "mod_revision": "7"}},
        {"type": "DELETE", "kv": {"key": key, "mod_revision": "8"}}]}})  # fmt: skip
    assert batch.revision == 7
    assert [(e.kind, e.kv.key, e.kv.value, e.kv.mod_revision) for e in batch.events] == [
        ("PUT", "/p/m", b"{}", 7), ("DELETE", "/p/m", b"", 8)]  # fmt: skip
    assert _watch_batch({"result": {"header": {"revision": "3"}, "created": True}}).events == ()
    with pytest.raises(Compacted):
        _watch_batch({"result": {"compact_revision": "5", "canceled": True}})
    with pytest.raises(EtcdError, match="canceled"):
        _watch_batch({"result": {"canceled": True, "cancel_reason": "x"}})
    assert prefix_end("/p/") == "L3Aw"  # base64("/p0")
