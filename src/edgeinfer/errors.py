"""Domain errors. Raised below the server layer; mapped to HTTP/gRPC in server/errors.py."""


class EdgeInferError(Exception):
    """Base class: the message is shown to the client as-is, so it must say what was wrong."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelNotFound(EdgeInferError):
    """The model (or the requested version) is not in the repository or not loaded."""


class ModelNotReady(EdgeInferError):
    """The model exists but is not ready to serve (loading, unloading, failed)."""


class InvalidInput(EdgeInferError):
    """The request is malformed or does not match the model's declared inputs."""


class InvalidParameter(InvalidInput):
    """One named request parameter is out of range or of the wrong type (OpenAI's `param`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class PayloadTooLarge(EdgeInferError):
    """The request body exceeds the configured limit."""


class QueueFull(EdgeInferError):
    """The model's queue is full; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(EdgeInferError):
    """The request's deadline passed before it could run."""


class Unavailable(EdgeInferError):
    """The server cannot take the request now (shutting down, overloaded, too hot)."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AdapterNotFound(EdgeInferError):
    """The requested adapter is not registered for the model."""


class RepositoryError(EdgeInferError):
    """The model repository on disk is malformed (bad config, manifest, layout)."""


class LoadError(EdgeInferError):
    """A model version failed to load, warm up or verify."""


class BackendError(EdgeInferError):
    """The runtime failed while executing a valid request."""
