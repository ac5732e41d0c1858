"""OpenAI-style API errors: ``{"error": {"message", "type", "param", "code"}}`` with the right HTTP status.

Every failure a client can cause or meet (bad JSON, wrong types, an unknown preset, a full queue, a
timeout) leaves as one of these, never as a traceback.
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error answered to the client as an OpenAI-style JSON body.

    Args:
        status: the HTTP status (400, 401, 404, 413, 429, 503...).
        message: one line saying what is wrong and, where it helps, what to send instead.
        type: OpenAI's error type (``invalid_request_error``, ``authentication_error``...).
        param: the request field at fault, if any.
        code: a short machine-readable code (``model_not_found``, ``queue_full``...).
    """

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The JSON body of an error response."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400: the request is malformed or asks for something this server does not do."""
    return APIError(400, message, param=param, code=code)


def not_found(message: str, param: str | None = "model", code: str = "model_not_found") -> APIError:
    """A 404: an unknown model or preset."""
    return APIError(404, message, param=param, code=code)


def unauthorized() -> APIError:
    """A 401: a missing or wrong API key."""
    return APIError(401, "missing or invalid API key: send 'Authorization: Bearer KEY'", type="authentication_error",
                    code="invalid_api_key")


def queue_full(limit: int) -> APIError:
    """A 429: the request queue already holds ``limit`` requests."""
    return APIError(429, f"the server is busy: {limit} requests are already queued; retry later", type="rate_limit_error",
                    code="queue_full")


def timed_out(seconds: float) -> APIError:
    """A 503: the request did not finish within the server's per-request timeout."""
    return APIError(503, f"the request did not finish within {seconds:g} s; retry later or ask for fewer tokens",
                    type="server_error", code="timeout")
