"""Temporary addresses: users create, list, extend and delete their own; administrators
anyone's. Gateways ask only whether a recipient is one and whether it is live.

Another user's address is answered as if it did not exist (404), so a user token cannot
learn which addresses others hold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from mailsift.service.aliases.store import Alias, AliasError, AliasLimit, AliasState
from mailsift.service.auth import GatewayCaller, Principal, UserCaller
from mailsift.service.deps import State
from mailsift.service.errors import (
    BadRequest,
    Forbidden,
    LimitReached,
    NotFound,
    StateUnavailable,
)
from mailsift.service.schemas import IDENTITY_PATTERN, ErrorBody

router = APIRouter(prefix="/v1/aliases", tags=["aliases"])
gateway_router = APIRouter(prefix="/v1/recipients", tags=["aliases"])

T = TypeVar("T")

AddressPath = Annotated[
    str,
    Path(
        min_length=3,
        max_length=320,
        pattern=IDENTITY_PATTERN,
        description="A temporary address.",
    ),
]
UserQuery = Annotated[
    str | None,
    Query(
        max_length=320,
        pattern=IDENTITY_PATTERN,
        description="Whose addresses (a user token: one it speaks for; required).",
    ),
]
DaysQuery = Annotated[
    int | None,
    Query(
        ge=1,
        le=36_500,
        description="Lifetime in days (default MAILSIFT_ALIAS_DEFAULT_DAYS, at most "
        "MAILSIFT_ALIAS_MAX_DAYS).",
    ),
]

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "bad parameters, a lifetime over MAILSIFT_ALIAS_MAX_DAYS, or no alias domain",
        404: "no such temporary address (or another user's)",
        409: "the user holds MAILSIFT_ALIAS_MAX_PER_USER live addresses (limit_reached)",
        503: "state database unavailable",
    }.items()
}


class ForeignSenderOut(BaseModel):
    domain: str
    first_seen: str
    last_seen: str
    messages: int


class AliasOut(BaseModel):
    address: str
    user: str
    label: str | None
    state: AliasState
    created_at: str
    expires_at: str
    deleted_at: str | None
    created_by: str
    foreign_senders: list[ForeignSenderOut]


class AliasListOut(BaseModel):
    count: int
    aliases: list[AliasOut]


class RecipientStateOut(BaseModel):
    address: str
    alias: AliasState | None
    """None: not a temporary address."""


async def _call(op: Callable[[], T]) -> T:
    try:
        return await run_in_threadpool(op)
    except AliasLimit as exc:
        raise LimitReached(str(exc)) from None
    except AliasError as exc:
        raise BadRequest(str(exc)) from None
    except SQLAlchemyError as exc:
        raise StateUnavailable(
            f"the alias store cannot be reached ({type(exc).__name__})"
        ) from None


def _for_user(caller: Principal, user: str | None) -> str | None:
    """The owner a call is about; a user token names one of its own addresses."""
    if caller.role == "admin":
        return user
    if not user:
        raise Forbidden("a user token must name its own user=")
    if not caller.may_speak_for(user):
        raise Forbidden(f"this token does not speak for {user}")
    return user


def _owned(caller: Principal, alias: Alias | None, address: str) -> Alias:
    """The alias, if the caller may see it; anyone else's is answered as absent."""
    if alias is None or not caller.may_speak_for(alias.owner):
        raise NotFound(f"{address} is not a temporary address of yours")
    return alias


@router.post("", response_model=AliasOut, status_code=201, responses=ERRORS)
async def create_alias(
    caller: UserCaller,
    state: State,
    user: UserQuery = None,
    days: DaysQuery = None,
    label: Annotated[
        str | None,
        Query(
            max_length=253,
            pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$",
            description="The sender domain it is for (default: learned from its first mail).",
        ),
    ] = None,
) -> JSONResponse:
    """Create a random temporary address for a user, delivered to them until it expires."""
    owner = _for_user(caller, user)
    if not owner:
        raise BadRequest("user= is required")
    by = caller.name
    alias = await _call(lambda: state.aliases.create(owner, days=days, label=label, created_by=by))
    return JSONResponse(alias.as_dict(), status_code=201)


@router.get("", response_model=AliasListOut, responses=ERRORS)
async def list_aliases(
    caller: UserCaller,
    state: State,
    user: UserQuery = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
) -> dict[str, Any]:
    """A user's temporary addresses (admins: all without user=), with who leaked each.

    Who leaked one: the sender domains that wrote to it without being the one it was
    made for (``foreign_senders``)."""
    owner = _for_user(caller, user)
    found = await _call(lambda: state.aliases.list_aliases(owner, limit=limit, offset=offset))
    return {"count": len(found), "aliases": [a.as_dict() for a in found]}


@router.get("/{address}", response_model=AliasOut, responses=ERRORS)
async def get_alias(caller: UserCaller, state: State, address: AddressPath) -> dict[str, Any]:
    """One temporary address, with who leaked it."""
    found = await _call(lambda: state.aliases.get(address))
    return _owned(caller, found, address).as_dict()


@router.patch("/{address}", response_model=AliasOut, responses=ERRORS)
async def extend_alias(
    caller: UserCaller,
    state: State,
    address: AddressPath,
    days: Annotated[int, Query(ge=1, le=36_500, description="Live this many days from now.")],
) -> dict[str, Any]:
    """Extend (or shorten) a temporary address's life; a deleted one stays deleted."""
    _owned(caller, await _call(lambda: state.aliases.get(address)), address)
    extended = await _call(lambda: state.aliases.extend(address, days))
    return _owned(caller, extended, address).as_dict()


@router.delete("/{address}", response_model=AliasOut, responses=ERRORS)
async def delete_alias(caller: UserCaller, state: State, address: AddressPath) -> dict[str, Any]:
    """Delete a temporary address: refused from now on, and never handed out again."""
    _owned(caller, await _call(lambda: state.aliases.get(address)), address)
    deleted = await _call(lambda: state.aliases.delete(address))
    return _owned(caller, deleted, address).as_dict()


@gateway_router.get("/{address}", response_model=RecipientStateOut, responses=ERRORS)
async def recipient(_: GatewayCaller, state: State, address: AddressPath) -> dict[str, Any]:
    """Is a recipient a live, expired or deleted temporary address, or none (null)?

    The policy server asks at RCPT about a recipient it does not list; the answer does
    not name the owner."""
    store = state.aliases
    found = await _call(lambda: store.get(address)) if store.may_be_alias(address) else None
    return {"address": address.strip().lower(), "alias": found.state() if found else None}
