"""Counters of the gateway processes, in their own registry (served with ``--metrics-port``).

The milter and the policy server are separate processes from the service, so their
numbers cannot ride on the service's ``/metrics``; each serves its own. Labels are
bounded enumerations: component, fail mode, outcome.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, start_http_server

__all__ = ["DECISIONS", "JUNK_MARKS", "REGISTRY", "SERVICE_FAILURES", "serve_metrics"]

REGISTRY = CollectorRegistry()
SERVICE_FAILURES = Counter(
    "mailsift_gateway_service_failures",
    "Calls to the service that got no usable answer, by component and the fail mode applied.",
    ["component", "mode"],
    registry=REGISTRY,
)
DECISIONS = Counter(
    "mailsift_gateway_decisions",
    "What the gateway told the MTA, by component and outcome.",
    ["component", "outcome"],
    registry=REGISTRY,
)
JUNK_MARKS = Counter(
    "mailsift_gateway_junk_marks",
    "Recipients whose copy the milter marked for their Junk folder (their personal verdict "
    "was stricter than the message's).",
    registry=REGISTRY,
)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Serve the registry over HTTP in a daemon thread (nothing when ``port`` is 0)."""
    if port:
        start_http_server(port, addr=host, registry=REGISTRY)
