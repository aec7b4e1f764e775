"""``mailsift token``: create, list and revoke API tokens."""

from __future__ import annotations

from typing import Annotated

import typer

from mailsift.cli.app import App, app, err
from mailsift.cli.state import state_database

token_app = App(no_args_is_help=True, help="API tokens (service accounts of mailsift).")
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="gateway, user, reporter or admin.")],
    name: Annotated[str, typer.Option(help="Who or what holds it.")] = "",
    address: Annotated[
        list[str],
        typer.Option(help="User and reporter tokens: an address (or @domain) it speaks for."),
    ] = [],  # noqa: B006 - typer copies defaults
) -> None:
    """Create a token; it is printed once, as the last word of the output.

    The output names the state database it went into (MAILSIFT_DATA_DIR, default ./data,
    or MAILSIFT_DATABASE_URL); a warning on stderr says when that database was created
    just now, so no service has ever used it and none will accept the token.
    """
    from sqlalchemy import inspect

    from mailsift.service.auth import ROLES, TokenStore

    if role not in ROLES:  # before anything is created
        err.print(f"[red]error:[/red] role must be one of {', '.join(ROLES)}")
        raise typer.Exit(2)
    with state_database("write to") as (engine, where):
        used = inspect(engine).has_table("api_tokens")  # every service start creates it
        try:
            info, secret = TokenStore(engine).create(role, name or role, address)
        except ValueError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
    typer.echo(
        f"created {info.role} token {info.id} ({info.name}) in {where}; shown only now: {secret}"
    )
    if not used:
        typer.echo(
            f"warning: {where} was not a state database before: this command created it, "
            "so no service uses it yet. A service started with another MAILSIFT_DATA_DIR "
            "(default ./data) or MAILSIFT_DATABASE_URL will refuse this token: create it "
            "again with the service's settings.",
            err=True,
        )


@token_app.command("list")
def token_list() -> None:
    """List tokens (never their secrets)."""
    from mailsift.service.auth import TokenStore

    with state_database("use the state database") as (engine, _):
        tokens = TokenStore(engine).list()
    for t in tokens:
        state = "revoked" if t.revoked_at else "active"
        typer.echo(f"{t.id}  {t.role:7s}  {state:7s}  {t.name}  {' '.join(t.addresses)}")


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The id shown by `token list`.")],
) -> None:
    """Revoke a token; it fails at once everywhere."""
    from mailsift.service.auth import TokenStore

    with state_database("use the state database") as (engine, _):
        revoked = TokenStore(engine).revoke(token_id)
    if not revoked:
        err.print(f"[red]error:[/red] no active token {token_id}")
        raise typer.Exit(2)
    typer.echo(f"revoked {token_id}")
