"""Allow and block lists: global (administrators) or per user.

Allow entries pass the guard (``lists.guard``): a refusal is a 422 that says why; an entry
that is not an address or a domain is a 400.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from mailsift.service.auth import Principal, UserCaller
from mailsift.service.deps import State
from mailsift.service.errors import Forbidden, NotFound, StateUnavailable
from mailsift.service.schemas import IDENTITY_PATTERN, ErrorBody

router = APIRouter(prefix="/v1/lists", tags=["lists"])

T = TypeVar("T")

KindPath = Annotated[Literal["allow", "block"], Path(description="Which list.")]
EntryPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=320,
        pattern=IDENTITY_PATTERN,
        description="An address or a domain.",
    ),
]
ScopeQuery = Annotated[
    Literal["global", "user"], Query(description="global (administrators) or one user's.")
]
UserQuery = Annotated[
    str | None,
    Query(max_length=320, pattern=IDENTITY_PATTERN, description="The user, for scope=user."),
]

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "not an address or a domain, or bad parameters",
        404: "no such entry",
        422: "the guard refused the allow entry (list_guard_refused)",
        503: "state database unavailable",
    }.items()
}


class ListEntryOut(BaseModel):
    kind: Literal["allow", "block"]
    scope: Literal["global", "user"]
    user: str | None
    entry: str
    type: Literal["address", "domain"]
    created_at: str
    created_by: str


class ListOut(BaseModel):
    kind: Literal["allow", "block"]
    count: int
    entries: list[ListEntryOut]


class DeletedOut(BaseModel):
    deleted: bool
    kind: Literal["allow", "block"]
    scope: Literal["global", "user"]
    user: str | None
    entry: str


async def _call(op: Callable[[], T]) -> T:
    try:
        return await run_in_threadpool(op)
    except SQLAlchemyError as exc:
        raise StateUnavailable(f"the list store cannot be reached ({type(exc).__name__})") from None


def _own_lists_only(caller: Principal, scope: str | None, user: str | None) -> None:
    """A user token manages only its own per-user lists; global lists are the admins'."""
    if caller.role == "admin":
        return
    if scope != "user" or not user:
        raise Forbidden("a user token may only use scope=user with its own user=")
    if not caller.may_speak_for(user):
        raise Forbidden(f"this token does not speak for {user}")


@router.get("/{kind}", response_model=ListOut, responses=ERRORS)
async def list_entries(
    caller: UserCaller,
    state: State,
    kind: KindPath,
    scope: Annotated[Literal["global", "user"] | None, Query()] = None,
    user: UserQuery = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,  # beyond: no SQL integer
) -> dict[str, Any]:
    """Entries of one list, optionally of one scope and one user."""
    _own_lists_only(caller, scope, user)
    entries = await _call(
        lambda: state.lists.list_entries(kind, scope, user, limit=limit, offset=offset)
    )
    return {"kind": kind, "count": len(entries), "entries": [e.as_dict() for e in entries]}


@router.get("/{kind}/{entry}", response_model=ListEntryOut, responses=ERRORS)
async def get_entry(
    caller: UserCaller,
    state: State,
    kind: KindPath,
    entry: EntryPath,
    scope: ScopeQuery = "global",
    user: UserQuery = None,
) -> dict[str, Any]:
    """One entry, or 404."""
    _own_lists_only(caller, scope, user)
    found = await _call(lambda: state.lists.get(kind, entry, scope, user))
    if found is None:
        raise NotFound(f"{entry} is not on the {scope} {kind} list")
    return found.as_dict()


@router.put(
    "/{kind}/{entry}",
    response_model=ListEntryOut,
    status_code=201,
    responses={**ERRORS, 200: {"model": ListEntryOut, "description": "already listed"}},
)
async def put_entry(
    caller: UserCaller,
    state: State,
    kind: KindPath,
    entry: EntryPath,
    scope: ScopeQuery = "global",
    user: UserQuery = None,
    actor: Annotated[
        str | None,
        Query(
            max_length=320,
            pattern=IDENTITY_PATTERN,
            description="Who adds it (default: user or admin).",
        ),
    ] = None,
) -> JSONResponse:
    """Add an entry (201), or confirm it is there (200); allow entries pass the guard."""
    _own_lists_only(caller, scope, user)
    if caller.role != "admin":
        by = caller.name
    else:
        by = actor or (user if scope == "user" and user else caller.name)
    stored, created = await _call(lambda: state.lists.put(kind, entry, scope, user, by))
    return JSONResponse(stored.as_dict(), status_code=201 if created else 200)


@router.delete("/{kind}/{entry}", response_model=DeletedOut, responses=ERRORS)
async def delete_entry(
    caller: UserCaller,
    state: State,
    kind: KindPath,
    entry: EntryPath,
    scope: ScopeQuery = "global",
    user: UserQuery = None,
) -> dict[str, Any]:
    """Remove an entry, or 404 if it was not there."""
    _own_lists_only(caller, scope, user)
    deleted = await _call(lambda: state.lists.delete(kind, entry, scope, user))
    if not deleted:
        raise NotFound(f"{entry} is not on the {scope} {kind} list")
    return {"deleted": True, "kind": kind, "scope": scope, "user": user, "entry": entry}
