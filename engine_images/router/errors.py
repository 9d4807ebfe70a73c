"""The router's error tree; ``router_app`` maps it to HTTP in one middleware.

::

    RouterError                      500  base: anything the router raises on purpose
    ├── BadRequestError              400  the client's request is wrong; never reaches an engine
    │   ├── InvalidJSONError         400  body is not a JSON object
    │   ├── MissingFieldError        400  no ``prompt`` / ``messages``
    │   ├── PromptTooLongError       400  prompt (+ max_tokens) exceeds the model's length
    │   └── PayloadTooLargeError     413  body larger than the model's context can need
    ├── ModelNotFoundError           404  ``model`` is not the served model
    ├── UpstreamRejectedError        4xx  an engine refused the request (its status and reason)
    ├── OverloadedError              429  the router holds its in-flight bound (Retry-After)
    ├── LocalResourceError           503  the router itself is short of descriptors/memory
    ├── NoBackendError               503  no healthy engine of a needed role
    ├── UpstreamError                502  an engine failed (5xx, reset, bad answer)
    │   └── UpstreamTimeoutError     504  an engine did not answer in time
    └── ConfigError                  500  the router file is invalid (wraps RouterConfigError)

Every message says what went wrong and what to change. ``UpstreamError`` is also what the
proxy catches to fall back from a remote prefill to a local one.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BadRequestError",
    "ConfigError",
    "InvalidJSONError",
    "LocalResourceError",
    "MissingFieldError",
    "ModelNotFoundError",
    "NoBackendError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PromptTooLongError",
    "RouterError",
    "UpstreamError",
    "UpstreamRejectedError",
    "UpstreamTimeoutError",
]


class RouterError(Exception):
    """Base of every error the router raises; ``status`` is the HTTP status it maps to."""

    status: int = 500
    kind: str = "InternalServerError"

    retry_after_s: float | None = None
    """Sent as ``Retry-After`` (whole seconds, at least 1) when set."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s

    def to_json(self) -> dict[str, Any]:
        """The OpenAI/vLLM error body."""
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": None,
                "code": self.status,
            }
        }


class BadRequestError(RouterError):
    """The request is malformed; it is rejected before any engine sees it."""

    status = 400
    kind = "BadRequestError"


class InvalidJSONError(BadRequestError):
    """The body is not a JSON object."""


class MissingFieldError(BadRequestError):
    """A required field (``prompt``, ``messages``) is absent or has the wrong type."""


class PromptTooLongError(BadRequestError):
    """The prompt, with the requested completion, exceeds ``maxModelLen``."""


class PayloadTooLargeError(BadRequestError):
    """The body (after decompression) is larger than any request within ``maxModelLen`` needs;
    it is refused while reading, so it never sits whole in memory."""

    status = 413
    kind = "RequestEntityTooLargeError"


class ModelNotFoundError(RouterError):
    """The request names a model this router does not serve."""

    status = 404
    kind = "NotFoundError"


class UpstreamRejectedError(RouterError):
    """An engine answered 4xx: the request is bad for it; passed to the client as is."""

    kind = "BadRequestError"

    def __init__(self, message: str, *, status: int, body: bytes = b"") -> None:
        super().__init__(message, status=status)
        self.body = body


class OverloadedError(RouterError):
    """The router already serves ``admission.maxInFlight`` requests: refused at once, before
    the body is read, so overload costs the engines nothing and latency stays bounded."""

    status = 429
    kind = "RateLimitError"


class LocalResourceError(RouterError):
    """The router ran out of its own resources (file descriptors, memory) calling an engine;
    not the engine's fault, so no engine's circuit counts it."""

    status = 503
    kind = "ServiceUnavailableError"


class NoBackendError(RouterError):
    """No healthy engine of a needed role (all down, circuit open, or none configured)."""

    status = 503
    kind = "ServiceUnavailableError"


class UpstreamError(RouterError):
    """An engine failed: 5xx, connection refused or reset, or an answer without KV params."""

    status = 502
    kind = "BadGatewayError"


class UpstreamTimeoutError(UpstreamError):
    """An engine leg exceeded its timeout (``timeouts`` in the router file)."""

    status = 504
    kind = "GatewayTimeoutError"


class ConfigError(RouterError):
    """The router file could not be loaded; the message names the field to fix."""
