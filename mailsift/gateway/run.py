"""Starting the gateway processes: settings from the environment plus command-line
overrides, logging, the metrics listener, and the event loop. The CLI only calls these."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from mailsift.gateway.client import GatewayMisconfigured
from mailsift.gateway.metrics import serve_metrics
from mailsift.gateway.milter import serve_milter
from mailsift.gateway.policy import serve_policy
from mailsift.gateway.settings import GatewaySettings

__all__ = ["gateway_settings", "run_milter", "run_policy"]


def gateway_settings(**overrides: Any) -> GatewaySettings:
    """``MAILSIFT_GATEWAY_*`` variables, with the options given on the command line on top."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return GatewaySettings(**given)


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from mailsift.service.logsafe import EscapeControls  # a daemon: the import cost is once

    for handler in logging.getLogger().handlers:  # a sender or a header cannot forge a line
        handler.addFilter(EscapeControls())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    logging.getLogger("kilter").setLevel(logging.WARNING)


def _uvloop() -> bool:
    """uvloop (installed with uvicorn[standard]) when present: a faster event loop."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _run(
    name: str, serve: Callable[[GatewaySettings], Awaitable[None]], settings: GatewaySettings
) -> None:
    """Serve until interrupted; exit 2 with one line when the service refuses the token."""
    _logging()
    serve_metrics(settings.metrics_port)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            anyio.run(serve, settings, backend_options={"use_uvloop": _uvloop()})
    except GatewayMisconfigured as exc:
        print(f"mailsift {name}: the service refused the gateway token: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def run_milter(settings: GatewaySettings) -> None:
    """Serve the milter until interrupted."""
    _run("milter", serve_milter, settings)


def run_policy(settings: GatewaySettings) -> None:
    """Serve the policy server until interrupted."""
    _run("policy", serve_policy, settings)
