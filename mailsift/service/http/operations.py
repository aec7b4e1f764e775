"""The app's operations as its routers declare them: who may call each, what body it reads.

One table, built from the routers the app includes, serves the OpenAPI document (each
operation lists the refusals it can give: 400, 401, 403, 404, 408, 413, 415, 422, 431)
and the tests that walk every operation, so neither keeps a list by hand. The document
also links each answer to the operations its fields address (a score's ``fingerprint``
to ``/v1/feedback/{fingerprint}`` …), which is what a stateful fuzzer follows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from mailsift.service.auth import Role, RoleCheck
from mailsift.service.http.gate import PUBLIC_PATHS, takes_message
from mailsift.service.http.listeners import GATEWAY_PATHS
from mailsift.service.schemas import ERRORS

__all__ = ["Operation", "document_links", "document_refusals", "operations"]

BodyKind = Literal["message", "json", "none"]


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    """The path template, as in the OpenAPI document (``/v1/lists/{kind}/{entry}``)."""
    roles: frozenset[str] | None
    """Roles the operation admits; None when it needs no token."""
    body: BodyKind

    @property
    def on_gateway_listener(self) -> bool:
        """Served on the gateway listener (to a token whose role admits it)."""
        return self.path.startswith(GATEWAY_PATHS)


def _roles(dependant: Dependant, found: frozenset[str] | None) -> frozenset[str] | None:
    for sub in dependant.dependencies:
        if isinstance(sub.call, RoleCheck):
            found = sub.call.roles if found is None else found & sub.call.roles
        found = _roles(sub, found)
    return found


def operations(routers: Iterable[tuple[APIRouter, Sequence[Role]]]) -> tuple[Operation, ...]:
    """Every operation of ``routers`` (each with the roles its inclusion requires)."""
    found = []
    for router, needs in routers:
        required = frozenset(needs) | {"admin"} if needs else None
        for route in router.routes:
            if not isinstance(route, APIRoute):
                continue
            roles = _roles(route.dependant, required)
            if roles is None and route.path not in PUBLIC_PATHS:
                raise AssertionError(f"{route.path} admits any token: give it a role")
            kind: BodyKind = (
                "message"
                if takes_message(route)
                else ("json" if route.body_field is not None else "none")
            )
            for method in sorted(route.methods or ()):
                found.append(Operation(method, route.path, roles, kind))
    return tuple(found)


_ANY = {
    400: "bad parameters, or a path with control characters",
    408: "the request head or body did not arrive in time (the connection is closed)",
    431: "request line or header fields over 64 KiB",
}
_BODY = {
    "message": {
        413: "message over MAILSIFT_MAX_MESSAGE_BYTES (checked while it is read)",
        415: "Content-Type is not one the operation takes",
        422: "unusable message (empty, or no header fields)",
    },
    "json": {
        413: "body over MAILSIFT_MAX_JSON_BYTES (checked while it is read)",
        415: "Content-Type is not application/json",
    },
    "none": {},
}


def document_refusals(schema: dict[str, Any], table: Iterable[Operation]) -> None:
    """Add to each operation of an OpenAPI ``schema`` the refusals it can answer with."""
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for op in table:
        entry = schema["paths"].get(op.path, {}).get(op.method.lower())
        if entry is None:
            continue
        refusals: dict[int, str] = dict(_ANY)
        if op.roles is not None:
            who = ", ".join(sorted(op.roles))
            refusals[401] = "no token, or one that is unknown or revoked"
            refusals[403] = (
                f"the token's role may not call this (admitted: {who}; on the gateway "
                "listener an admin token acts as a gateway token)"
            )
            refusals[404] = (
                "no such item"
                if op.on_gateway_listener
                else "no such item; on the gateway listener, every path of the admin listener"
            )
        refusals.update(_BODY[op.body])
        responses = entry.setdefault("responses", {})
        generated = responses.get("422", {}).get("content", {}).get("application/json", {})
        if generated.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
            del responses["422"]  # FastAPI's own; an invalid parameter is a 400 here
        for status in _BODY["message"]:
            # The shared table's body refusals, on an operation that reads no message.
            shared = ERRORS.get(status, {}).get("description")
            if responses.get(str(status), {}).get("description") == shared:
                del responses[str(status)]
        for status, text in refusals.items():
            responses.setdefault(
                str(status),
                {"description": text, "content": {"application/json": {"schema": error}}},
            )


_PARAMETER = re.compile(r"\{([^}]+)\}")


def document_links(schema: dict[str, Any]) -> None:
    """OpenAPI links from each successful answer to every operation whose path parameters
    are all fields of that answer (``fingerprint``; ``kind`` and ``entry``; ``user``)."""
    components = schema.get("components", {}).get("schemas", {})
    targets = [
        (entry["operationId"], set(_PARAMETER.findall(path)))
        for path, methods in schema["paths"].items()
        for entry in methods.values()
        if _PARAMETER.search(path)
    ]
    for methods in schema["paths"].values():
        for entry in methods.values():
            for status in ("200", "201"):
                answer = entry.get("responses", {}).get(status)
                ref = (answer or {}).get("content", {}).get("application/json", {})
                name = ref.get("schema", {}).get("$ref", "").rpartition("/")[2]
                fields = set(components.get(name, {}).get("properties", {}))
                links = {
                    target: {
                        "operationId": target,
                        "parameters": {p: f"$response.body#/{p}" for p in sorted(params)},
                    }
                    for target, params in targets
                    if params <= fields and target != entry["operationId"]
                }
                if links:
                    answer["links"] = links
