"""Sampling is safe for every parameter value the API accepts and every logits row a model can
produce: a token is always chosen, never a NaN one while a real one exists, tiny temperatures are
greedy, and logprobs stay finite (JSON has no NaN or infinity).

`temperature: 1e-50` once overflowed the row to inf/NaN, left no candidates and killed the
engine thread (IndexError); `seed: -1` was a 500."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeinfer.errors import InvalidParameter
from edgeinfer.serving.sampling import MIN_LOGPROB, Sampler, SamplingParams

# Vocabulary sizes of the models we serve (the tests' tiny Llama, a 32k Llama, Gemma 3's 262k)
# and the degenerate ones.
VOCABS = [1, 2, 3, 40, 32000, 262144]
SPECIAL = [np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 1e30, -1e30, 0.0, 1e-30]

temperatures = st.one_of(
    st.sampled_from([0.0, 1e-300, 1e-50, 1e-6, 1e-5, 0.01, 1.0, 2.0, 100.0]),
    st.floats(0.0, 100.0, allow_nan=False),
)
params = st.builds(
    SamplingParams,
    max_tokens=st.none() | st.integers(1, 10**9),
    temperature=temperatures,
    top_p=st.sampled_from([1e-300, 1e-9, 0.5, 0.9, 1.0]) | st.floats(1e-300, 1.0),
    top_k=st.sampled_from([-1, 0, 1, 2, 50, 10**12]),
    min_p=st.sampled_from([0.0, 1e-300, 0.05, 0.5, 1.0]) | st.floats(0.0, 1.0),
    repetition_penalty=st.sampled_from([1e-300, 0.01, 1.0, 1.3, 10.0]),
    presence_penalty=st.floats(-2.0, 2.0),
    frequency_penalty=st.floats(-2.0, 2.0),
    seed=st.none() | st.sampled_from([-1, 0, 2**64 - 1]) | st.integers(0, 2**32),
    logprobs=st.none() | st.integers(0, 20),
)


@st.composite
def rows(draw: st.DrawFn) -> np.ndarray:
    """A logits row: a base (random, constant, all huge, all -inf, all NaN) with special values
    planted at random places."""
    n = draw(st.sampled_from(VOCABS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    base = draw(st.sampled_from(["normal", "wide", "constant", "huge", "-inf", "nan"]))
    row = {
        "normal": lambda: rng.normal(0, 3, n),
        "wide": lambda: rng.normal(0, 1e30, n),
        "constant": lambda: np.full(n, 7.0),
        "huge": lambda: np.full(n, 3.4e38),
        "-inf": lambda: np.full(n, -np.inf),
        "nan": lambda: np.full(n, np.nan),
    }[base]().astype(np.float32)
    for _ in range(draw(st.integers(0, 6))):
        row[draw(st.integers(0, n - 1))] = draw(st.sampled_from(SPECIAL))
    return row


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=params, row=rows(), steps=st.integers(1, 3), prompt=st.lists(st.integers(0, 50)))
def test_any_accepted_settings_on_any_row_choose_a_valid_token(
    p: SamplingParams, row: np.ndarray, steps: int, prompt: list[int]
) -> None:
    sampler = Sampler(p, prompt, len(row))
    finite = np.isfinite(row) | (row == np.inf)
    for _ in range(steps):
        token, info = sampler.sample(row)  # warnings are errors in this suite
        assert 0 <= token < len(row)
        if finite.any():
            assert not np.isnan(row[token]) and row[token] != -np.inf
        if info is not None:
            assert math.isfinite(info.logprob) and info.logprob >= MIN_LOGPROB
            assert all(math.isfinite(v) for _, v in info.top)
            assert len(info.top) == min(p.logprobs or 0, len(row))


@settings(max_examples=200, deadline=None)
@given(temperature=st.floats(0.0, 1e-5, exclude_max=True), row=rows())
def test_temperatures_below_1e_5_are_greedy(temperature: float, row: np.ndarray) -> None:
    token, _ = Sampler(SamplingParams(temperature=temperature, seed=1), [], len(row)).sample(row)
    clean = np.where(np.isnan(row), -np.inf, row)
    assert token == int(np.argmax(clean))


def test_infinite_logits_tie_at_the_top() -> None:
    row = np.zeros(100, np.float32)
    row[[10, 20]] = np.inf
    row[30] = np.nan
    s = Sampler(SamplingParams(temperature=1.0, seed=3), [], 100)
    assert {s.sample(row)[0] for _ in range(100)} == {10, 20}


def test_seed_minus_one_is_random_like_llama_cpp() -> None:
    assert SamplingParams(seed=-1).seed is None
    row = np.zeros(1000, np.float32)
    draws = {Sampler(SamplingParams(seed=-1), [], 1000).sample(row)[0] for _ in range(20)}
    assert len(draws) > 1


@pytest.mark.parametrize(
    ("param", "value"),
    [("temperature", math.nan), ("temperature", math.inf), ("temperature", -1e-9),
     ("top_p", math.nan), ("top_p", 0.0), ("top_k", -2), ("min_p", math.nan),
     ("min_p", 1.0000001), ("repetition_penalty", math.inf), ("repetition_penalty", 0.0),
     ("presence_penalty", math.nan), ("frequency_penalty", -math.inf), ("seed", -2),
     ("seed", 2**64), ("logprobs", 21), ("max_tokens", 0), ("stop", ["x" * 257])],
)  # fmt: skip
def test_out_of_range_values_name_the_parameter(param: str, value: object) -> None:
    with pytest.raises(InvalidParameter) as e:
        SamplingParams(**{param: value})  # type: ignore[arg-type]
    assert e.value.param == param
