"""The one table mapping domain errors to HTTP status codes and gRPC status codes."""

from __future__ import annotations

import logging
import math

from edgeinfer import auth
from edgeinfer import errors as e

log = logging.getLogger("edgeinfer.server")

# Most specific first: lookup walks the exception's MRO.
_TABLE: dict[type[Exception], tuple[int, str]] = {
    auth.Unauthenticated: (401, "UNAUTHENTICATED"),
    auth.PermissionDenied: (403, "PERMISSION_DENIED"),
    auth.TooManyAttempts: (429, "RESOURCE_EXHAUSTED"),
    e.ModelNotFound: (404, "NOT_FOUND"),
    e.AdapterNotFound: (404, "NOT_FOUND"),
    e.InvalidInput: (400, "INVALID_ARGUMENT"),
    e.PayloadTooLarge: (413, "RESOURCE_EXHAUSTED"),
    e.QueueFull: (429, "RESOURCE_EXHAUSTED"),
    e.DeadlineExceeded: (504, "DEADLINE_EXCEEDED"),
    e.ModelNotReady: (503, "UNAVAILABLE"),
    e.Unavailable: (503, "UNAVAILABLE"),
    e.RepositoryError: (400, "FAILED_PRECONDITION"),
    e.LoadError: (400, "FAILED_PRECONDITION"),
    e.BackendError: (500, "INTERNAL"),
}


def status_of(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, gRPC status code name, client-facing message) for any exception.
    Code names are `grpc.StatusCode` member names, so grpc is imported only by the gRPC server."""
    for cls in type(exc).__mro__:
        if cls in _TABLE:
            http, code = _TABLE[cls]
            return http, code, str(exc)
    log.exception("unexpected error", exc_info=exc)
    return 500, "INTERNAL", f"internal error: {type(exc).__name__}"


def retry_after(exc: BaseException) -> str | None:
    """Seconds for a Retry-After header, for errors that carry one."""
    seconds = getattr(exc, "retry_after", None)
    return None if seconds is None else str(max(1, math.ceil(seconds)))
