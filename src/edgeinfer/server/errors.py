"""The one table mapping domain errors to HTTP status codes and gRPC status codes."""

from __future__ import annotations

import logging
import math

import grpc

from edgeinfer import errors as e

log = logging.getLogger("edgeinfer.server")

# Most specific first: lookup walks the exception's MRO.
_TABLE: dict[type[Exception], tuple[int, grpc.StatusCode]] = {
    e.ModelNotFound: (404, grpc.StatusCode.NOT_FOUND),
    e.AdapterNotFound: (404, grpc.StatusCode.NOT_FOUND),
    e.InvalidInput: (400, grpc.StatusCode.INVALID_ARGUMENT),
    e.PayloadTooLarge: (413, grpc.StatusCode.RESOURCE_EXHAUSTED),
    e.QueueFull: (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
    e.DeadlineExceeded: (504, grpc.StatusCode.DEADLINE_EXCEEDED),
    e.ModelNotReady: (503, grpc.StatusCode.UNAVAILABLE),
    e.Unavailable: (503, grpc.StatusCode.UNAVAILABLE),
    e.RepositoryError: (400, grpc.StatusCode.FAILED_PRECONDITION),
    e.LoadError: (400, grpc.StatusCode.FAILED_PRECONDITION),
    e.BackendError: (500, grpc.StatusCode.INTERNAL),
}


def status_of(exc: BaseException) -> tuple[int, grpc.StatusCode, str]:
    """(HTTP status, gRPC code, client-facing message) for any exception."""
    for cls in type(exc).__mro__:
        if cls in _TABLE:
            http, code = _TABLE[cls]
            return http, code, str(exc)
    log.exception("unexpected error", exc_info=exc)
    return 500, grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"


def retry_after(exc: BaseException) -> str | None:
    """Seconds for a Retry-After header, for errors that carry one."""
    seconds = getattr(exc, "retry_after", None)
    return None if seconds is None else str(max(1, math.ceil(seconds)))
