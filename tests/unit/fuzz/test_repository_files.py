"""Fuzzing what the server reads from disk and the command line: config.toml, --set overrides,
manifest.json and state.json. A bad file is a ConfigError / RepositoryError that says which file
and what is wrong, never another exception (which would crash a load or a whole reload)."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeinfer.config import (
    CanaryOptions,
    ConfigError,
    DynamicBatching,
    LifecycleOptions,
    LlmOptions,
    ModelConfig,
    OrtOptions,
    QueueOptions,
    TextOptions,
    parse_overrides,
)
from edgeinfer.errors import RepositoryError
from edgeinfer.repository import MANIFEST_NAME, verify_manifest
from edgeinfer.repository.manifest import read_manifest
from edgeinfer.repository.state import STATE_NAME, ModelState, load_state
from tests.unit.fuzz.budget import fuzz

# ---- values a TOML or JSON file can hold ------------------------------------------------------

scalars = st.one_of(
    st.booleans(), st.integers(-(2**64), 2**64), st.floats(), st.text(max_size=8),
    st.sampled_from([0, 1, -1, 2, 8, 64, 0.5, 1.5, "all", "f16", "q8_0", "reject", "parallel"]),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


def _section(cls: type) -> st.SearchStrategy[dict[str, Any]]:
    """A table using the dataclass's own keys (and now and then an unknown one)."""
    keys = st.sampled_from([f.name for f in fields(cls)] + ["bogus"])
    return st.dictionaries(keys, values, max_size=4)


_SECTIONS = {"onnxruntime": OrtOptions, "text": TextOptions, "dynamic_batching": DynamicBatching,
             "queue": QueueOptions, "lifecycle": LifecycleOptions, "canary": CanaryOptions,
             "llm": LlmOptions}  # fmt: skip
_TOP = [f.name for f in fields(ModelConfig)] + ["bogus"]
configs = st.dictionaries(
    st.sampled_from(_TOP),
    values,
    max_size=6,
).flatmap(lambda raw: st.fixed_dictionaries(
    {k: (_section(_SECTIONS[k]) | values) if k in _SECTIONS else
        (st.dictionaries(st.sampled_from(["latest", "specific", "all"]), values, max_size=2) | values)
        if k == "version_policy" else st.just(v)
     for k, v in raw.items()}))  # fmt: skip


@fuzz(200)
@given(raw=configs)
def test_model_config_from_dict(raw: dict[str, Any]) -> None:
    try:
        config = ModelConfig.from_dict(raw, "m")
    except ConfigError as e:
        assert str(e).startswith("config")  # says where
        return
    assert config.name == "m"


@fuzz(200)
@given(text=st.one_of(st.binary(max_size=200),
                      st.text(max_size=200).map(str.encode),
                      st.sampled_from([b'backend = "onnxruntime"\n[queue]\nmax_queue_size = "x"\n',
                                       b"max_batch_size = 8\n\xff\xfe\n", b"[llm\n"])))  # fmt: skip
def test_model_config_from_toml_file(text: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "config.toml"
        path.write_bytes(text)
        try:
            ModelConfig.from_toml(path, "m")
        except ConfigError as e:
            assert str(path) in str(e)


def test_config_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    # Found by fuzzing: read_text() raised UnicodeDecodeError, which escaped as a crash.
    path = tmp_path / "config.toml"
    path.write_bytes(b"max_batch_size = 8\n# caf\xe9\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        ModelConfig.from_toml(path, "m")


overrides = st.lists(
    st.one_of(
        st.text(max_size=20),
        st.builds(lambda path, value: f"{path}={value}",
                  st.lists(st.sampled_from(["m", "queue", "max_queue_size", "a", "b", ""]),
                           min_size=1, max_size=4).map(".".join),
                  st.one_of(st.text(max_size=8), st.sampled_from(["8", "true", "[4, 8]", '"x"',
                                                                  "{a = 1}", "1\nb = 2"]))),
    ),
    max_size=5,
)  # fmt: skip


@fuzz(300)
@given(entries=overrides)
def test_parse_overrides(entries: list[str]) -> None:
    try:
        out = parse_overrides(entries)
    except ConfigError:
        return
    assert all(isinstance(v, dict) for v in out.values())


def test_override_of_a_value_and_a_key_under_it_is_a_config_error() -> None:
    # Found by fuzzing: `m.a=1` then `m.a.b=2` indexed into the integer 1 (TypeError).
    with pytest.raises(ConfigError, match=r"m\.a"):
        parse_overrides(["m.a=1", "m.a.b=2"])
    with pytest.raises(ConfigError):
        parse_overrides(["m.queue={x = 1}", "m.queue.x.y=2"])
    assert parse_overrides(["m.a.b=2", "m.a.c=3"]) == {"m": {"a": {"b": 2, "c": 3}}}


# ---- manifest.json ------------------------------------------------------------------------------

rel_names = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["model.onnx", "../model.onnx", "/etc/hostname", ".", "", "a/../../b",
                     "sub/x.bin", "nul\x00byte", "x" * 300, "a/" * 200 + "b", "\ud800"]),
)  # fmt: skip
manifests = st.one_of(
    st.binary(max_size=200),
    values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(rel_names, st.one_of(st.text(max_size=64), values), max_size=4).map(
        lambda files: json.dumps({"files": files}).encode(errors="surrogatepass")
    ),
)


@fuzz(300)
@given(manifest=manifests, present=st.dictionaries(st.sampled_from(["model.onnx", "sub/x.bin"]),
                                                   st.binary(max_size=16), max_size=2))  # fmt: skip
def test_manifest_files(manifest: bytes, present: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as d:
        version = Path(d) / "m" / "1"
        version.mkdir(parents=True)
        (Path(d) / "m" / "outside").write_bytes(b"secret")
        for name, content in present.items():
            (version / name).parent.mkdir(parents=True, exist_ok=True)
            (version / name).write_bytes(content)
        (version / MANIFEST_NAME).write_bytes(manifest)
        try:
            files = read_manifest(version)
            verify_manifest(version)
        except RepositoryError:
            return
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
        for rel in files:  # verified: every file is inside the version and present
            assert (version / rel).resolve().is_relative_to(version.resolve())


def test_manifest_naming_an_impossible_path_is_a_repository_error(tmp_path: Path) -> None:
    # Found by fuzzing: a NUL byte in a listed name made Path.resolve() raise ValueError, and a
    # name past NAME_MAX made is_file() raise OSError (ENAMETOOLONG).
    for name in ("a\u0000b", "x" * 300):
        (tmp_path / MANIFEST_NAME).write_text(json.dumps({"files": {name: "00"}}))
        with pytest.raises(RepositoryError, match="cannot be checked"):
            verify_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("[" * 100_000 + "]" * 100_000)  # json recursion
    with pytest.raises(RepositoryError, match="malformed manifest"):
        verify_manifest(tmp_path)


# ---- state.json ---------------------------------------------------------------------------------

states = st.one_of(
    st.binary(max_size=120),
    values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({}, optional={
        "live": st.one_of(st.none(), st.integers(-3, 2**70), values),
        "canary": st.one_of(st.none(), values, st.fixed_dictionaries(
            {"version": st.one_of(st.integers(-2, 9), values),
             "weight": st.one_of(st.floats(), values)})),
        "blocked": st.one_of(st.lists(st.one_of(st.integers(-2, 9), st.floats()), max_size=3),
                             values),
        "history": st.one_of(values, st.lists(st.fixed_dictionaries(
            {"event": st.sampled_from(["promote", "rollback", "canary"]),
             "from": st.one_of(st.none(), st.integers(0, 9), values)}), max_size=3)),
    }).map(lambda doc: json.dumps(doc).encode()),
)  # fmt: skip


@fuzz(400)
@given(content=states)
def test_state_file(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / STATE_NAME).write_bytes(content)
        try:
            state = load_state(Path(d))
        except RepositoryError:
            return
    # What the lifecycle manager relies on once a state file has loaded:
    assert state.live is None or (type(state.live) is int and state.live > 0)
    assert all(type(v) is int for v in state.blocked)
    if state.canary is not None:
        assert state.canary.version > 0 and 0.0 <= state.canary.weight <= 1.0
    previous = state.previous_live()
    assert previous is None or type(previous) is int
    json.dumps(state.event("test").to_json())  # and it can be written back


@pytest.mark.parametrize("doc", [
    "[]", '"live"', "7", '{"live": "2"}', '{"live": true}', '{"blocked": [Infinity]}',
    '{"blocked": "12"}', '{"history": [1, 2]}', '{"history": [{"event": "rollback", "from": "x"}]}',
    '{"canary": {"version": 2, "weight": NaN}}', '{"canary": {"version": 0, "weight": 0.5}}',
    "[" * 100_000 + "]" * 100_000,
])  # fmt: skip
def test_malformed_state_files_found_by_fuzzing(tmp_path: Path, doc: str) -> None:
    (tmp_path / STATE_NAME).write_text(doc)
    with pytest.raises(RepositoryError, match="delete it to reset"):
        load_state(tmp_path)


def test_a_state_file_we_wrote_still_loads(tmp_path: Path) -> None:
    from edgeinfer.repository.state import Canary, save_state

    state = ModelState(live=3, canary=Canary(4, 0.25), blocked=(2,)).event(
        "promote", **{"from": 2, "to": 3}
    )
    save_state(tmp_path, state)
    again = load_state(tmp_path)
    assert again == state and again.previous_live() == 2
    assert not math.isnan(again.canary.weight if again.canary else 0.0)
