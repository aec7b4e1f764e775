"""Serving: ``serve`` runs the HTTP service, ``diagnose`` checks its setup."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated

import typer

from mailsift.cli.app import app, fail, load_settings

if TYPE_CHECKING:
    from mailsift.service.http.listeners import ListenError


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Address of the gateway listener; loopback unless TLS is set up.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port of the gateway listener.")
    ] = 8470,
    admin_host: Annotated[
        str, typer.Option(envvar="MAILSIFT_ADMIN_HOST", help="Address of the admin listener.")
    ] = "127.0.0.1",
    admin_port: Annotated[
        int,
        typer.Option(
            min=0,
            max=65535,
            envvar="MAILSIFT_ADMIN_PORT",
            help="Port of the admin listener; 0 = one listener serves everything.",
        ),
    ] = 8471,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    access_log: Annotated[bool, typer.Option(help="Log every request line.")] = False,
) -> None:
    """Run the HTTP service (settings from MAILSIFT_* variables)."""

    from mailsift.service.db import private_dir
    from mailsift.service.http.listeners import ListenError, is_loopback
    from mailsift.service.http.listeners import serve as serve_listeners
    from mailsift.service.http.supervisor import WorkersFailed
    from mailsift.service.leftovers import clean_leftovers

    if admin_port and admin_port == port:
        fail(
            f"--port and --admin-port are both {port}: give the admin listener a port of "
            "its own, or --admin-port 0 for one listener that serves everything"
        )
    os.environ["MAILSIFT_ADMIN_HOST"] = admin_host
    if admin_port:
        os.environ["MAILSIFT_ADMIN_PORT"] = str(admin_port)
    else:
        os.environ.pop("MAILSIFT_ADMIN_PORT", None)
    settings = load_settings()
    tls = settings.tls_certfile is not None
    for where in {host, admin_host} if admin_port else {host}:
        if not tls and not is_loopback(where) and not settings.allow_plain_http:
            fail(
                f"refusing plain HTTP on {where}: set MAILSIFT_TLS_CERTFILE and "
                "MAILSIFT_TLS_KEYFILE, or MAILSIFT_ALLOW_PLAIN_HTTP=true behind a TLS proxy"
            )
    private_dir(settings.data_dir)
    # What a killed run left behind: before the metrics dir of this one is made.
    clean_leftovers(settings.data_dir, settings.snapshot_path)
    if workers > 1:
        from mailsift.service.metrics import prepare_multiprocess_dir

        prepare_multiprocess_dir(settings.data_dir)  # the spawned workers pool metrics here
    from mailsift.service.logsafe import log_config as safe_log_config

    log_config = safe_log_config()  # control characters escaped in every line
    try:
        serve_listeners(
            host=host,
            port=port,
            admin_host=admin_host,
            admin_port=admin_port or None,
            workers=workers,
            certfile=str(settings.tls_certfile) if settings.tls_certfile else None,
            keyfile=str(settings.tls_keyfile) if settings.tls_keyfile else None,
            log_config=log_config,
            access_log=access_log,
        )
    except ListenError as exc:
        fail(_cannot_listen(exc))
    except WorkersFailed as exc:
        fail(f"workers failed, service stopped: {exc}")


def _cannot_listen(exc: ListenError) -> str:
    """What stopped a listener, and the option that moves it."""
    import errno

    if exc.listener == "admin":
        host_option, port_option = "--admin-host", "--admin-port (or MAILSIFT_ADMIN_PORT)"
    else:
        host_option, port_option = "--host", "--port"
    if exc.errno == errno.EADDRINUSE:
        why, change = "another mailsift serve, or another service, listens there", port_option
    elif exc.errno == errno.EACCES:
        why, change = "ports below 1024 need privileges", port_option
    else:
        why, change = "not an address of this machine?", host_option
    reason = exc.reason[:1].lower() + exc.reason[1:]
    return (
        f"the {exc.listener} listener cannot listen on {exc.address}: {reason} ({why}); "
        f"choose another {'port' if change is port_option else 'address'} with {change}"
    )


@app.command()
def diagnose(
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    admin_host: Annotated[
        str | None, typer.Option(help="Admin listener address to judge (default: the setting).")
    ] = None,
) -> None:
    """Check model, lists, limits, listeners, gateways, disk and the mail domains' DNS."""
    from mailsift.service.diagnostics.cli import diagnose_command

    settings = load_settings()
    raise typer.Exit(diagnose_command(settings, as_json=json_output, admin_host=admin_host))
