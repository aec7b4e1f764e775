"""The console's pages, one module each; :data:`router` gathers them under ``/console``."""

from __future__ import annotations

from fastapi import APIRouter

from mailsift.service.console.pages import (
    diagnostics,
    history,
    learning,
    lists,
    outbound,
    overview,
    signin,
    tokens,
)
from mailsift.service.console.session import PREFIX

__all__ = ["router"]

router = APIRouter(prefix=PREFIX, include_in_schema=False)
for _module in (signin, overview, history, learning, outbound, lists, tokens, diagnostics):
    router.include_router(_module.router)
