"""Account events that gateways report: today, failed logins (SMTP AUTH, IMAP, webmail)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field, field_validator

from mailsift.service.accounts.flow import auth_failure
from mailsift.service.accounts.store import normalise_user
from mailsift.service.deps import State
from mailsift.service.metrics import observe_auth_failure
from mailsift.service.schemas import ERRORS, IDENTITY_PATTERN

router = APIRouter(prefix="/v1", tags=["accounts"])


class AuthFailureEvent(BaseModel):
    type: Literal["auth_failure"]
    user: Annotated[
        str,
        Field(
            min_length=1,
            max_length=320,
            pattern=IDENTITY_PATTERN,
            description="The login that failed (no control characters).",
        ),
    ]
    client_ip: Annotated[
        str,
        Field(
            max_length=64,
            description="Where the attempt came from: an IPv4 or IPv6 address.",
            json_schema_extra={"anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
        ),
    ]

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        return normalise_user(value)

    @field_validator("client_ip")
    @classmethod
    def _client_ip(cls, value: str) -> str:
        try:
            return ipaddress.ip_address(value.strip()).compressed
        except ValueError:
            raise ValueError("not an IP address") from None


class EventOut(BaseModel):
    recorded: Literal["auth_failure"]
    user: str
    state: Literal["ok", "watch", "suspended"]
    auth_failures_hour: int


@router.post("/events", response_model=EventOut, responses=ERRORS)
async def record_event(state: State, event: AuthFailureEvent) -> dict[str, object]:
    """Record an account event a gateway reported and re-judge that user."""
    observe_auth_failure("login")
    account, stats = await auth_failure(state, event.user, event.client_ip)
    return {
        "recorded": event.type,
        "user": account.user,
        "state": account.state,
        "auth_failures_hour": stats.auth_failures_hour,
    }
