"""A request's inputs as model feeds: encoded images decoded off the event loop, then checked
against the model's inputs. Runs before queueing, so decoding overlaps other requests' runs."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from edgeinfer.config import Limits
from edgeinfer.errors import InvalidInput
from edgeinfer.serving.runner import Runner
from edgeinfer.serving.validation import validate_request
from edgeinfer.types import InferRequest, Tensor


def _check_strings(tensor: Tensor, limit: int, flag: str) -> None:
    for i, v in enumerate(tensor.data.reshape(-1)):
        if isinstance(v, bytes | str) and len(v) > limit:
            raise InvalidInput(
                f"input '{tensor.name}': string {i} is longer than {limit} bytes ({flag})"
            )


async def prepare_feeds(
    request: InferRequest, model: Any, max_batch_size: int, runner: Runner, limits: Limits
) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """(feeds, requested output names) for `model`, or InvalidInput naming what is wrong."""
    decoder = getattr(model, "decoder", None)  # runtime.images.ImageModel
    inputs = request.inputs
    for pos, tensor in enumerate(inputs):
        if tensor.datatype != "BYTES":
            continue
        if decoder is None or tensor.name != decoder.name:
            _check_strings(tensor, limits.max_string_bytes, "--max-string-bytes")
            continue
        if tensor.data.ndim != 1 or (max_batch_size and len(tensor.data) > max_batch_size):
            raise InvalidInput(
                f"input '{tensor.name}': encoded images go in a 1-D BYTES tensor "
                f"of at most {max_batch_size or 'any number of'} elements "
                f"(one image each), got shape {list(tensor.shape)}"
            )
        _check_strings(tensor, limits.max_image_bytes, "--max-image-bytes")
        rows = list(tensor.data)
        if not rows:
            raise InvalidInput(f"input '{tensor.name}' holds no images")
        loop = asyncio.get_running_loop()
        samples = await asyncio.gather(
            *(
                loop.run_in_executor(runner.prep_pool, decoder.decode_one, i, v)
                for i, v in enumerate(rows)
            )
        )
        inputs = [*inputs[:pos], Tensor(tensor.name, np.stack(samples)), *inputs[pos + 1 :]]
    specs = model.tensor_inputs if decoder is not None else model.inputs
    if inputs is not request.inputs:  # an image decoded into its tensor
        request = InferRequest(request.model, inputs, outputs=request.outputs)
    return validate_request(request, specs, model.outputs, max_batch_size)
