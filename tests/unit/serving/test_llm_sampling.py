"""Sampling in numpy: seeded determinism, the top-k/top-p/min-p masks, penalties, logprobs, and
the text stream that holds back incomplete characters and possible stop strings."""

from __future__ import annotations

import numpy as np
import pytest

from edgeinfer.errors import InvalidInput
from edgeinfer.serving.sampling import (
    Sampler,
    SamplingParams,
    TextStream,
    distribution,
    logprobs,
)

LOGITS = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05], np.float32))


def draws(params: SamplingParams, n: int = 200) -> list[int]:
    s = Sampler(params, [], len(LOGITS))
    return [s.sample(LOGITS)[0] for _ in range(n)]


def test_same_seed_same_tokens_other_seed_other_tokens() -> None:
    a = draws(SamplingParams(seed=7))
    assert a == draws(SamplingParams(seed=7))
    assert a != draws(SamplingParams(seed=8))
    assert set(a) == {0, 1, 2, 3, 4}


def test_greedy_ignores_the_seed() -> None:
    assert set(draws(SamplingParams(temperature=0.0, seed=1), 20)) == {0}
    assert set(draws(SamplingParams(top_k=1, seed=1), 20)) == {0}


def test_top_k_keeps_the_k_most_likely() -> None:
    ids, probs = distribution(LOGITS, 1.0, 2, 0.0, 1.0)
    assert ids.tolist() == [0, 1]
    np.testing.assert_allclose(probs, [0.5 / 0.7, 0.2 / 0.7], rtol=1e-6)
    assert set(draws(SamplingParams(top_k=2, seed=3))) == {0, 1}


def test_top_p_keeps_the_smallest_prefix_reaching_p() -> None:
    assert distribution(LOGITS, 1.0, 0, 0.0, 0.5)[0].tolist() == [0]
    assert distribution(LOGITS, 1.0, 0, 0.0, 0.7)[0].tolist() == [0, 1]
    assert distribution(LOGITS, 1.0, 0, 0.0, 0.71)[0].tolist() == [0, 1, 2]
    assert distribution(LOGITS, 1.0, 0, 0.0, 1.0)[0].tolist() == [0, 1, 2, 3, 4]


def test_min_p_drops_tokens_below_a_share_of_the_best() -> None:
    # 0.29 * 0.5 = 0.145: token 2 (0.15) stays, 3 and 4 go.
    ids, probs = distribution(LOGITS, 1.0, 0, 0.29, 1.0)
    assert ids.tolist() == [0, 1, 2]
    assert probs.sum() == pytest.approx(1.0)


def test_temperature_sharpens_and_flattens() -> None:
    _, cold = distribution(LOGITS, 0.5, 0, 0.0, 1.0)
    _, hot = distribution(LOGITS, 2.0, 0, 0.0, 1.0)
    assert cold[0] > 0.5 > hot[0]
    expected = np.array([0.5, 0.2, 0.15, 0.1, 0.05]) ** 2
    np.testing.assert_allclose(cold, expected / expected.sum(), rtol=1e-6)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    s = Sampler(SamplingParams(repetition_penalty=2.0), prompt=[1, 3], n_vocab=4)
    out = s.penalized(np.array([1.0, 4.0, -1.0, -2.0], np.float32))
    np.testing.assert_allclose(out, [1.0, 2.0, -1.0, -4.0])


def test_presence_and_frequency_penalties_count_generated_tokens_only() -> None:
    s = Sampler(SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), [2], 4)
    for t in (1, 1, 3):
        s.accept(t)
    out = s.penalized(np.zeros(4, np.float32))
    np.testing.assert_allclose(out, [0.0, -1.0, 0.0, -0.75])


def test_penalties_change_the_greedy_choice() -> None:
    s = Sampler(SamplingParams(temperature=0.0, frequency_penalty=2.0), [], len(LOGITS))
    assert [s.sample(LOGITS)[0] for _ in range(3)] == [0, 1, 2]  # each pick costs 2


def test_logprobs_are_the_raw_log_softmax_with_sorted_top_n() -> None:
    lp = logprobs(LOGITS, 2, 3)
    assert lp.token == 2 and lp.logprob == pytest.approx(np.log(0.15), abs=1e-6)
    assert [t for t, _ in lp.top] == [0, 1, 2]
    np.testing.assert_allclose([v for _, v in lp.top], np.log([0.5, 0.2, 0.15]), atol=1e-6)
    s = Sampler(SamplingParams(temperature=0.0, logprobs=0), [], len(LOGITS))
    token, info = s.sample(LOGITS)
    assert token == 0
    assert info is not None and info.top == [] and info.logprob == pytest.approx(np.log(0.5))


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", -1.0), ("top_p", 0.0), ("top_k", -2), ("min_p", 1.5), ("max_tokens", 0),
     ("presence_penalty", 3.0), ("repetition_penalty", 0.0), ("logprobs", 21), ("stop", [""])],
)  # fmt: skip
def test_out_of_range_settings_are_invalid_input(field: str, value: object) -> None:
    with pytest.raises(InvalidInput, match=field.split("_")[0]):
        SamplingParams(**{field: value})  # type: ignore[arg-type]


def test_text_stream_holds_back_incomplete_utf8() -> None:
    ts = TextStream(())
    euro = "€".encode()
    assert ts.push(euro[:1]) == ("", False)
    assert ts.push(euro[1:2]) == ("", False)
    assert ts.push(euro[2:] + b"!") == ("€!", False)
    assert ts.push(b"\xc3") == ("", False)
    assert ts.flush() == "\ufffd"  # cut off mid-character at the end


def test_stop_string_split_across_tokens() -> None:
    ts = TextStream(("</s>", "STOP"))
    out = [ts.push(p) for p in (b"Hello <", b"/", b"s> world")]
    assert out == [("Hello ", False), ("", False), ("", True)]
    assert ts.text == "Hello "


def test_held_text_is_released_once_it_cannot_start_a_stop() -> None:
    ts = TextStream(("STOP",))
    assert ts.push(b"ST") == ("", False)
    assert ts.push(b"ay") == ("STay", False)
    assert ts.push(b" S") == (" ", False)
    assert ts.flush() == "S"
    assert ts.text == "STay S"


def test_stop_at_the_very_start_and_first_of_two() -> None:
    ts = TextStream(("b", "abc"))
    assert ts.push(b"xab") == ("xa", True)
    assert TextStream(("\n\n",)).push(b"one\n\ntwo") == ("one", True)


def test_logit_bias_forces_and_bans_tokens() -> None:
    logits = np.linspace(0.0, 5.0, 50, dtype=np.float32)  # token 49 is the most likely
    forced = Sampler(SamplingParams(temperature=0.0, logit_bias=((3, 100.0),)), [], 50)
    assert [forced.sample(logits)[0] for _ in range(3)] == [3, 3, 3]
    banned = Sampler(SamplingParams(temperature=1.0, seed=0, logit_bias=((49, -100.0),)), [], 50)
    assert 49 not in {banned.sample(logits)[0] for _ in range(200)}


@pytest.mark.parametrize(
    "bias", [((1, 100.5),), ((1, -101.0),), tuple((i, 1.0) for i in range(1025))]
)
def test_logit_bias_is_bounded(bias: tuple[tuple[int, float], ...]) -> None:
    with pytest.raises(InvalidInput, match="logit_bias"):
        SamplingParams(logit_bias=bias)
