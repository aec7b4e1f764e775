"""The few domain errors the API raises, and the one JSON shape every error takes.

Every failure a client can cause leaves as ``{"error": code, "detail": text}`` with a
4xx status; anything unforeseen is a bug: it is logged (without message content) and
leaves as a 500 with the same shape, never as a stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from mailsift.service.schemas import IDENTITY_PATTERN

__all__ = [
    "ApiError",
    "BadRequest",
    "Forbidden",
    "Gone",
    "LimitReached",
    "MessageTooLarge",
    "ModelNotReady",
    "NotFound",
    "NotScoredForUser",
    "RateLimited",
    "StateUnavailable",
    "Unauthorized",
    "UnsupportedMediaType",
    "UnusableMessage",
    "error_body",
    "error_response",
    "install_error_handlers",
]

log = logging.getLogger("mailsift.errors")


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(ApiError):
    pass


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class NotScoredForUser(ApiError):
    """A user reported a message that was never scored for one of their addresses."""

    status = 403
    code = "not_scored_for_user"


class Gone(ApiError):
    """It existed, and is no longer kept (a message past the history's retention)."""

    status = 410
    code = "gone"


class LimitReached(ApiError):
    """A per-user limit on something held (temporary addresses) is reached."""

    status = 409
    code = "limit_reached"


class MessageTooLarge(ApiError):
    status = 413
    code = "message_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class UnusableMessage(ApiError):
    status = 422
    code = "unusable_message"


class RateLimited(ApiError):
    status = 429
    code = "rate_limited"


class ModelNotReady(ApiError):
    status = 503
    code = "not_ready"


class StateUnavailable(ApiError):
    """The state database (lists, audit trail, accounts) cannot be read or written."""

    status = 503
    code = "unavailable"


def error_response(
    status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def error_body(code: str, detail: str) -> bytes:
    """The bytes of :func:`error_response`'s body, for answers written below Starlette."""
    return bytes(error_response(400, code, detail).body)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "message_too_large",
    415: "unsupported_media_type",
    431: "request_head_too_large",
}


def install_error_handlers(app: FastAPI) -> None:
    """One handler table for the whole app."""

    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.code, exc.detail)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(400, "bad_request", _describe_validation(exc))

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "error")
        # The headers too: a 405 names the methods the path has (Allow).
        return error_response(exc.status_code, code, str(exc.detail), exc.headers)

    async def client_gone(_: Request, exc: Exception) -> JSONResponse:
        # The connection is gone: nobody reads this answer, and the protocol layer has
        # already logged the one line a dropped upload is worth (no traceback).
        return error_response(400, "client_disconnected", "the client closed the connection")

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error(
            "unhandled error on %s %s: %s", request.method, request.url.path, type(exc).__name__
        )
        return error_response(500, "internal_error", "the service could not handle this request")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(Exception, unexpected)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
        msg = err.get("msg", "invalid")
        if err.get("type") == "string_pattern_mismatch" and (
            err.get("ctx", {}).get("pattern") == IDENTITY_PATTERN
        ):
            msg = "must not contain control characters (nor U+2028, U+2029)"
        parts.append(f"{where or 'request'}: {msg}")
    return "; ".join(parts) or "invalid request"
