"""The operator console: server-rendered pages for the people who run mailsift.

Served by the admin listener only, at ``/console`` (the gateway listener's guard
answers 404 there, as for every admin path). Signing in takes an admin token, kept in
an HttpOnly, SameSite=Strict cookie (:mod:`.session`); every change is a form POST with
a CSRF token. Pages read the same stores the JSON API does, when they are opened: an
unwatched console costs the service nothing.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from mailsift.service.console.pages import router
from mailsift.service.console.render import page
from mailsift.service.console.session import PREFIX, CsrfRefused, SignInRequired

__all__ = ["PREFIX", "install_console"]


async def _sign_in(request: Request, exc: Exception) -> Response:
    return RedirectResponse(f"{PREFIX}/login", status_code=303)


async def _csrf_refused(request: Request, exc: Exception) -> Response:
    return page(
        request,
        "error.html",
        None,
        status=403,
        error="Refused: the form did not carry this session's CSRF token. Reload the page "
        "and try again.",
    )


def install_console(app: FastAPI) -> None:
    """Add the console's pages, its static files and its two exception answers."""
    app.include_router(router)
    static = StaticFiles(directory=Path(__file__).with_name("static"))
    app.mount(f"{PREFIX}/static", static, name="console-static")
    app.add_exception_handler(SignInRequired, _sign_in)
    app.add_exception_handler(CsrfRefused, _csrf_refused)
