"""Dependencies as ``Annotated`` aliases, so a handler's signature says what it needs."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from mailsift.service.settings import Settings
from mailsift.service.state import ServiceState


async def _state(request: Request) -> ServiceState:
    # async: FastAPI runs a plain function dependency in a thread, a hop per request.
    state: ServiceState = request.app.state.mailsift
    return state


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.mailsift.settings
    return settings


State = Annotated[ServiceState, Depends(_state)]
SettingsDep = Annotated[Settings, Depends(_settings)]
