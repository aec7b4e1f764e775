"""Dependencies as ``Annotated`` aliases, so a handler's signature says what it needs."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from mailsift.service.settings import Settings
from mailsift.service.state import ServiceState


def _state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.mailsift
    return state


def _settings(request: Request) -> Settings:
    return _state(request).settings


State = Annotated[ServiceState, Depends(_state)]
SettingsDep = Annotated[Settings, Depends(_settings)]
