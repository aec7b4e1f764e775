"""``mailsift alias``: users' temporary addresses."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from mailsift.cli.app import App, app, err, load_settings
from mailsift.cli.state import state_database

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from mailsift.service.aliases.store import Alias, AliasStore


alias_app = App(
    no_args_is_help=True,
    help="Temporary addresses: a user's throw-away address, delivered until it expires.",
)
app.add_typer(alias_app, name="alias")


def _alias_store(engine: Engine) -> AliasStore:
    from mailsift.service.aliases.store import AliasStore

    return AliasStore(engine, load_settings())


def _alias_line(alias: Alias) -> str:
    leaked = ",".join(s.domain for s in alias.foreign_senders) or "-"
    expires = datetime.fromtimestamp(alias.expires_at, UTC).strftime("%Y-%m-%d %H:%M")
    return (
        f"{alias.address}  {alias.state():7s}  {alias.owner}  until {expires}  "
        f"for {alias.label or '-'}  leaked to {leaked}"
    )


@alias_app.command("create")
def alias_create(
    user: Annotated[str, typer.Option(help="Whose address it is (delivered to them).")],
    days: Annotated[
        int | None, typer.Option(min=1, help="Lifetime (default MAILSIFT_ALIAS_DEFAULT_DAYS).")
    ] = None,
    label: Annotated[
        str | None, typer.Option(help="The sender domain it is for (default: its first mail's).")
    ] = None,
) -> None:
    """Create a random temporary address for a user; prints it."""
    from mailsift.service.aliases.store import AliasError

    with state_database("write to") as (engine, _):
        try:
            alias = _alias_store(engine).create(user, days=days, label=label, created_by="cli")
        except (AliasError, ValueError) as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
    typer.echo(_alias_line(alias))


@alias_app.command("list")
def alias_list(
    user: Annotated[str | None, typer.Option(help="Only this user's (default: all).")] = None,
) -> None:
    """List temporary addresses, newest first, with the sender domains that leaked each."""
    with state_database("use the state database") as (engine, _):
        found = _alias_store(engine).list_aliases(user)
    for alias in found:
        typer.echo(_alias_line(alias))


@alias_app.command("delete")
def alias_delete(
    address: Annotated[str, typer.Argument(help="The temporary address.")],
) -> None:
    """Delete a temporary address: refused from now on, never handed out again."""
    with state_database("write to") as (engine, _):
        alias = _alias_store(engine).delete(address)
    if alias is None:
        err.print(f"[red]error:[/red] no temporary address {address}")
        raise typer.Exit(2)
    typer.echo(_alias_line(alias))
