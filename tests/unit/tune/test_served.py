"""The requests tune sends a server to confirm its best candidates: the server's own decoder reads
every body back to the samples they were made from, with one header length for all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from edgeinfer.server.kserve_codec import decode_request
from edgeinfer.tune.served import read_requests, write_requests


def test_every_body_decodes_to_its_sample_with_one_header_length(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    samples = [
        {
            "text": np.array([b"short"], dtype=object),
            "image": rng.standard_normal((1, 3, 4, 4)).astype(np.float32),
        },
        {
            "text": np.array(["a much longer sentence, é included".encode()], dtype=object),
            "image": rng.standard_normal((1, 3, 4, 4)).astype(np.float32),
        },
    ]
    write_requests(tmp_path, samples)
    requests = read_requests(tmp_path)
    assert requests is not None and len(requests.bodies) == 2
    for body_path, sample in zip(requests.bodies, samples, strict=True):
        body = body_path.read_bytes()
        head = orjson.loads(body[: requests.header_length])
        assert head["parameters"] == {"binary_data_output": True}  # as tritonclient asks
        got = {
            t.name: t.data for t in decode_request("m", None, body, requests.header_length).inputs
        }
        assert got.keys() == sample.keys()
        assert list(got["text"]) == list(sample["text"])
        np.testing.assert_array_equal(got["image"], sample["image"])


def test_requests_half_written_are_not_read(tmp_path: Path) -> None:
    write_requests(tmp_path, [{"x": np.ones((1, 2), np.float32)}])
    (tmp_path / "0.body").unlink()
    assert read_requests(tmp_path) is None
    assert read_requests(tmp_path / "missing") is None
