"""KServe v2 / Open Inference Protocol over gRPC: `inference.GRPCInferenceService`.

Protocol translation only: requests become core types, the Engine does the work, domain errors
become status codes through `server/errors.py`. The stubs are the ones shipped in `tritonclient`,
so the wire format is exactly what Triton's clients speak. This module is imported only when gRPC
is enabled, which keeps tritonclient's generated stubs off every other command's import path.
"""

from __future__ import annotations

import contextvars
import functools
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from edgeinfer import __version__
from edgeinfer.auth import TENANT_IDENTITY, Authenticator, Principal, bearer
from edgeinfer.config import ConfigError, Limits, ServerSettings
from edgeinfer.errors import InvalidInput
from edgeinfer.server.errors import status_of
from edgeinfer.server.grpc_wire import split_infer
from edgeinfer.server.kserve_codec import (
    DEFAULT_LIMITS,
    array_from_bytes,
    check_shape,
    check_tensor_count,
    output_bytes,
)
from edgeinfer.server.offload import off_loop, trim_after
from edgeinfer.server.parse import optional_int, parse_float
from edgeinfer.telemetry.tracing import RequestTrace, traced
from edgeinfer.types import (
    DTYPE_TO_NUMPY,
    InferRequest,
    InferResponse,
    RequestedOutput,
    Tensor,
    tensor_bytes,
)

if TYPE_CHECKING:
    from edgeinfer.lifecycle import Engine
from edgeinfer.lifecycle.actions import run_action
from edgeinfer.lifecycle.interfaces import EngineControl

# binary_tensor_data is the HTTP extension; gRPC always carries raw bytes.
EXTENSIONS = ("classification", "model_repository", "statistics", "model_configuration")
# Responses are bounded by the model's outputs, not by a client's choice: no practical limit.
MAX_SEND_BYTES = 2**31 - 1

# Typed contents become numpy arrays one Python object per element, holding the GIL (~1 s per
# million elements on a busy 2-core CPU), so they are bounded like JSON: one element counts as
# this many bytes of --max-json-bytes. raw_input_contents (what tritonclient sends) is a copy.
TYPED_ELEMENT_BYTES = 16

# Typed `contents` field of each datatype and the dtype protobuf hands it back in (KServe v2 spec).
# FP16 has no typed field: it can only come as raw bytes.
_CONTENTS: dict[str, tuple[str, Any]] = {
    "BOOL": ("bool_contents", np.bool_),
    "INT8": ("int_contents", np.int32),
    "INT16": ("int_contents", np.int32),
    "INT32": ("int_contents", np.int32),
    "INT64": ("int64_contents", np.int64),
    "UINT8": ("uint_contents", np.uint32),
    "UINT16": ("uint_contents", np.uint32),
    "UINT32": ("uint_contents", np.uint32),
    "UINT64": ("uint64_contents", np.uint64),
    "FP32": ("fp32_contents", np.float32),
    "FP64": ("fp64_contents", np.float64),
    "BYTES": ("bytes_contents", object),
}

# ---- decoding ---------------------------------------------------------------------------------


def _params(pmap: Any) -> dict[str, Any]:
    """A protobuf map<string, InferParameter> as plain Python values."""
    out = {}
    for key, param in pmap.items():
        which = param.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(param, which)
    return out


def _shape(inp: Any, limits: Limits) -> tuple[int, ...]:
    name, shape = inp.name, tuple(int(d) for d in inp.shape)
    if inp.datatype not in DTYPE_TO_NUMPY:
        raise InvalidInput(
            f"input '{name}': unknown datatype {inp.datatype!r}; "
            f"expected one of {sorted(DTYPE_TO_NUMPY)}"
        )
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input '{name}': shape {list(shape)} has a negative dimension")
    check_shape(name, shape, limits)
    return shape


def _from_contents(contents: Any, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    if datatype not in _CONTENTS:
        raise InvalidInput(f"input '{name}': {datatype} data must be sent in raw_input_contents")
    field, wire_dtype = _CONTENTS[datatype]
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} needs {count} elements in contents.{field}, "
            f"got {len(values)}"
        )
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    wire = np.asarray(values, dtype=wire_dtype)
    arr = wire.astype(DTYPE_TO_NUMPY[datatype])
    if arr.dtype.kind in "iu" and not np.array_equal(arr, wire):  # NaN != NaN: floats unchecked
        raise InvalidInput(
            f"input '{name}': contents.{field} has values out of range for {datatype}"
        )
    return arr.reshape(shape)


def _tensor(inp: Any, raw: bytes | memoryview | None, limits: Limits) -> Tensor:
    shape = _shape(inp, limits)
    if "shared_memory_region" in inp.parameters:
        raise InvalidInput(f"input '{inp.name}': shared memory inputs are not supported")
    if raw is None:
        typed = limits.max_json_bytes // TYPED_ELEMENT_BYTES
        if math.prod(shape) > typed:
            raise InvalidInput(
                f"input '{inp.name}': {math.prod(shape)} elements in typed contents; at most "
                f"{typed} (--max-json-bytes / {TYPED_ELEMENT_BYTES}): send larger tensors in "
                "raw_input_contents"
            )
        if inp.datatype == "BYTES" and any(
            len(b) > limits.max_element_bytes for b in inp.contents.bytes_contents
        ):
            raise InvalidInput(
                f"input '{inp.name}': a BYTES element is longer than "
                f"{limits.max_element_bytes} bytes (--max-string-bytes, "
                "--max-image-bytes)"
            )
        return Tensor(inp.name, _from_contents(inp.contents, inp.datatype, shape, inp.name))
    if inp.HasField("contents"):
        raise InvalidInput(f"input '{inp.name}' has both contents and raw_input_contents")
    return Tensor(
        inp.name, array_from_bytes(raw, inp.datatype, shape, inp.name, limits, "raw content")
    )


def _request_bytes(req: Any) -> int:
    """The bytes a request brought: ModelInfer's as received; every other method's message is
    small (names, versions)."""
    return len(req) if isinstance(req, bytes) else 0


def decode_infer(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> InferRequest:
    """A received ModelInferRequest as the core InferRequest; tensors sent in
    raw_input_contents are views of `raw`, not copies."""
    req, raws = split_infer(raw)
    check_tensor_count(len(req.inputs), limits)
    if raws and len(raws) != len(req.inputs):
        raise InvalidInput(
            f"request has {len(raws)} raw_input_contents for {len(req.inputs)} inputs; "
            "send raw data for every input or for none"
        )
    inputs = [_tensor(inp, raws[i] if raws else None, limits) for i, inp in enumerate(req.inputs)]
    outputs = [RequestedOutput(o.name, _params(o.parameters)) for o in req.outputs]
    return InferRequest(
        model=req.model_name,
        version=req.model_version or None,
        inputs=inputs,
        id=req.id or None,
        outputs=outputs or None,
        parameters=_params(req.parameters),
    )


# ---- encoding ---------------------------------------------------------------------------------


def encode_infer(resp: InferResponse) -> bytes:
    """The core InferResponse as a serialized ModelInferResponse carrying raw_output_contents."""
    out = service_pb2.ModelInferResponse(
        model_name=resp.model, model_version=resp.version, id=resp.id or ""
    )
    for t in resp.outputs:
        out.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        out.raw_output_contents.append(tensor_bytes(t.data))
    return out.SerializeToString()


def _tensor_metadata(spec: Any) -> Any:
    return service_pb2.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=spec.shape
    )


# ---- service ----------------------------------------------------------------------------------

Method = TypeVar("Method", bound=Callable[..., Awaitable[Any]])


def _guarded(method: Method) -> Method:
    """Turn any exception into a status from the one table: never UNKNOWN, never a crash."""

    needed = _ROLES.get(method.__name__, "infer")

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter_ns()
        try:
            if self.auth.enabled:
                meta = dict(context.invocation_metadata() or ())
                token = bearer(str(meta.get("authorization", "")) or None)
                _principal.set(self.auth.check(token, needed, _peer_host(context.peer())))
            return await method(self, request, context)
        except Exception as exc:
            _, code_name, message = status_of(exc)
            code = grpc.StatusCode[code_name]
        finally:
            trim_after(started, _request_bytes(request))
        # A status, not context.abort(): abort raises through this frame, whose traceback then
        # ties it (and the request, a 600 KB image) into a cycle only a full GC frees.
        context.set_code(code)
        context.set_details(message)
        return None

    return wrapper  # type: ignore[return-value]


# Health is open; repository changes need an admin key; everything else an infer key.
_ROLES: dict[str, str | None] = {
    "ServerLive": None,
    "ServerReady": None,
    "RepositoryModelLoad": "admin",
    "RepositoryModelUnload": "admin",
}
_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "edgeinfer_principal", default=None
)


def _peer_host(peer: str) -> str:
    """'ipv4:127.0.0.1:5555' -> '127.0.0.1'."""
    kind, _, rest = peer.partition(":")
    return rest.rsplit(":", 1)[0].strip("[]") if kind in ("ipv4", "ipv6") else peer


class KServeServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, engine: Engine, auth: Authenticator | None = None, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self.engine = engine
        self.auth = auth or Authenticator(None)
        self.limits = limits

    @_guarded
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=self.engine.live())

    @_guarded
    async def ServerReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=self.engine.ready())

    @_guarded
    async def ModelReady(self, request: Any, context: Any) -> Any:
        ready = self.engine.model_ready(request.name, request.version or None)
        return service_pb2.ModelReadyResponse(ready=ready)

    @_guarded
    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerMetadataResponse(
            name="edgeinfer", version=__version__, extensions=EXTENSIONS
        )

    @_guarded
    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        md = self.engine.metadata(request.name, request.version or None)
        return service_pb2.ModelMetadataResponse(
            name=md.name,
            versions=md.versions,
            platform=md.platform,
            inputs=[_tensor_metadata(s) for s in md.inputs],
            outputs=[_tensor_metadata(s) for s in md.outputs],
        )

    @_guarded
    async def ModelInfer(self, request: bytes, context: Any) -> bytes:
        received = time.perf_counter_ns()
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        principal = _principal.get()
        if principal is not None and principal.tenant is not None:
            metadata["tenant"] = principal.tenant  # the key decides, not the client
        metadata.pop(TENANT_IDENTITY, None)  # set here only, from the key or --tenants
        tenant = self.auth.tenant(principal, metadata.get("tenant"))
        if tenant is not None:
            metadata[TENANT_IDENTITY] = tenant

        async def run(trace: RequestTrace | None) -> Any:
            req = await off_loop(len(request), decode_infer, request, self.limits)
            req.metadata, req.received_ns = metadata, received
            if trace is not None:
                trace.set("edgeinfer.model", req.model)
            resp = await self.engine.infer(req, trace)
            encode_start = time.perf_counter_ns()
            out = await off_loop(output_bytes(resp), encode_infer, resp)
            if trace is not None:
                trace.child("encode", encode_start, time.perf_counter_ns())
            return out

        attrs = {
            "rpc.system": "grpc",
            "rpc.service": "inference.GRPCInferenceService",
            "rpc.method": "ModelInfer",
        }
        return await traced(
            self.engine.tracer, "inference.GRPCInferenceService/ModelInfer", metadata, attrs, run
        )

    @_guarded
    async def ModelConfig(self, request: Any, context: Any) -> Any:
        doc = self.engine.model_config(request.name, request.version or None)
        config = json_format.ParseDict(
            doc, model_config_pb2.ModelConfig(), ignore_unknown_fields=True
        )
        return service_pb2.ModelConfigResponse(config=config)

    @_guarded
    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        stats = self.engine.statistics(request.name or None, request.version or None)
        return json_format.ParseDict(
            {"model_stats": stats},
            service_pb2.ModelStatisticsResponse(),
            ignore_unknown_fields=True,
        )

    @_guarded
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        models = [
            service_pb2.RepositoryIndexResponse.ModelIndex(
                name=s.name, version=s.version, state=s.state, reason=s.reason
            )
            for s in self.engine.index(request.ready)
        ]
        return service_pb2.RepositoryIndexResponse(models=models)

    @_guarded
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        params = _params(request.parameters)
        action = params.pop("edgeinfer.action", "load")
        unknown = sorted(set(params) - {"edgeinfer.version", "edgeinfer.weight"})
        if unknown:
            # Triton's config override and file upload: refuse rather than silently ignore.
            raise InvalidInput(
                f"load parameters {unknown} are not supported; edit the model repository on "
                "disk instead (edgeinfer.action = rollback | canary | promote | abort is)"
            )
        await lifecycle_action(self.engine, request.model_name, action, params)
        return service_pb2.RepositoryModelLoadResponse()

    @_guarded
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        # `unload_dependents` (always sent by tritonclient) is moot: there are no ensembles.
        await self.engine.unload(request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()


async def lifecycle_action(
    engine: EngineControl, model: str, action: str, params: dict[str, Any]
) -> None:
    """Lifecycle calls carried in RepositoryModelLoad parameters (gRPC has no RPCs for them)."""
    if action == "load":
        await engine.load(model)
        return
    version = optional_int(params, "edgeinfer.version", "edgeinfer.version")
    weight = params.get("edgeinfer.weight")
    await run_action(
        engine,
        model,
        action,
        version,
        None if weight is None else parse_float(weight, "edgeinfer.weight", 0.0, 1.0),
    )


def _unimplemented(rpc: str) -> Callable[..., Awaitable[None]]:
    async def method(self: Any, request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"edgeinfer does not implement {rpc}")

    return method


# The base class answers UNIMPLEMENTED by raising, which grpc.aio logs as an error with a traceback
# on every call (shared memory, streaming, trace and log settings): answer it quietly instead.
for _rpc in vars(service_pb2_grpc.GRPCInferenceServiceServicer):
    if not _rpc.startswith("_") and _rpc not in vars(KServeServicer):
        setattr(KServeServicer, _rpc, _unimplemented(_rpc))


class _RawModelInfer:
    """The generated registration, with ModelInfer taking and returning bytes: grpc.aio runs a
    method's (de)serializers on the event loop, and a large tensor's would stall every other
    client; ModelInfer parses and serializes in a worker thread instead (see grpc_wire)."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Replaced by the handlers add_registered_method_handlers registers."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        infer = handlers["ModelInfer"]
        handlers = {
            **handlers,
            "ModelInfer": grpc.unary_unary_rpc_method_handler(infer.unary_unary),
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, handlers),)
        )
        self._server.add_registered_method_handlers(service, handlers)


async def start_grpc(
    engine: Engine, settings: ServerSettings, auth: Authenticator | None = None
) -> grpc.aio.Server:
    """Start the gRPC server on the running event loop; the caller stops it."""
    server = grpc.aio.server(
        options=[
            (
                "grpc.max_receive_message_length",
                min(settings.max_request_bytes, settings.max_grpc_message_bytes),
            ),
            ("grpc.max_send_message_length", MAX_SEND_BYTES),
            # A connection that never completes the HTTP/2 preface is closed like a slow HTTP
            # head (grpc's own default waits 120 s). Idle ones close (GOAWAY) after a minute,
            # or --keep-alive-s if longer: clients keep channels open between calls.
            ("grpc.server_handshake_timeout_ms", int(settings.header_timeout_s * 1000)),
            ("grpc.max_connection_idle_ms", int(max(settings.keep_alive_s, 60) * 1000)),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        KServeServicer(engine, auth, settings.limits), _RawModelInfer(server)
    )
    address = f"{settings.host}:{settings.grpc_port}"
    try:
        if settings.tls_cert:
            creds = grpc.ssl_server_credentials(
                [(Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())]
            )
            bound = server.add_secure_port(address, creds)
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise ConfigError(
            f"cannot listen for gRPC on {address} (port in use?); "
            "pick another with --grpc-port, or 0 to disable gRPC"
        )
    await server.start()
    return server
