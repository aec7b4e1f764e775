"""Rendering console pages: Jinja2 templates (autoescaped) and the headers every page
carries (a strict Content-Security-Policy: this console's own script and style only)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse

from mailsift.service.console.session import CSRF_FIELD, PREFIX, Session

if TYPE_CHECKING:
    from fastapi.templating import Jinja2Templates

__all__ = ["NAV", "SECURITY_HEADERS", "page"]

NAV = (
    ("overview", "Overview"),
    ("history", "History"),
    ("learning", "Learning"),
    ("outbound", "Outbound"),
    ("lists", "Lists"),
    ("tokens", "Tokens"),
    ("diagnostics", "Diagnostics"),
)
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
}


def _when(at: float | None) -> str:
    if at is None:
        return "—"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@functools.cache
def templates() -> Jinja2Templates:
    """The templates, loaded at the first page shown: a worker whose console nobody
    opens does not even import Jinja2 (about a megabyte of memory)."""
    from fastapi.templating import Jinja2Templates

    loaded = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
    loaded.env.filters["when"] = _when
    return loaded


def page(
    request: Request,
    name: str,
    session: Session | None,
    *,
    status: int = 200,
    notice: str | None = None,
    error: str | None = None,
    **context: Any,
) -> HTMLResponse:
    """The template ``name`` with the page frame's context, and the security headers."""
    response = templates().TemplateResponse(
        request,
        name,
        {
            "prefix": PREFIX,
            "nav": NAV,
            "session": session,
            "csrf_field": CSRF_FIELD,
            "notice": notice,
            "error": error,
            **context,
        },
        status_code=status,
    )
    response.headers.update(SECURITY_HEADERS)
    return response
