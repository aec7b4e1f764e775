"""``mailsift report``: one user's report from their mail store (Dovecot's Junk folder).

Users report spam by moving mail into Junk, and mistakes by moving it out; Dovecot's
IMAPSieve pipes the message to a program and kills it after about ten seconds. This
sends it to ``POST /v1/feedback`` as that user's report and succeeds only once the
service has acknowledged it (durably on the training log). Every failure is one line
and an exit status a script can act on (:class:`ReportFailed`), never a traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import httpx

__all__ = [
    "DEFAULT_URL",
    "EXIT_REFUSED",
    "EXIT_TEMPFAIL",
    "EXIT_USAGE",
    "MAX_MESSAGE_BYTES",
    "ReportFailed",
    "ReportTarget",
    "Reported",
    "read_message",
    "read_token",
    "send_report",
]

Label = Literal["spam", "ham"]
Via = Literal["api", "imap"]

DEFAULT_URL = "http://127.0.0.1:8470"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Read no more than this from standard input; the service refuses more anyway."""

EXIT_REFUSED = 1
"""The service answered and refused the report (4xx): sending it again will not help."""
EXIT_USAGE = 2
"""Nothing was sent: the token, the URL or the input is unusable."""
EXIT_TEMPFAIL = 75
"""The service did not answer usably (down, slow, 5xx); trying later may work (EX_TEMPFAIL)."""


class ReportFailed(Exception):
    """A report that was not acknowledged: one line for the log, an exit status."""

    def __init__(self, line: str, status: int) -> None:
        super().__init__(line)
        self.status = status


@dataclass(frozen=True, slots=True)
class ReportTarget:
    """Where reports go and with which token."""

    url: str
    token: str
    timeout_seconds: float = 8.0


@dataclass(frozen=True, slots=True)
class Reported:
    """What the service did with an acknowledged report."""

    result: str
    fingerprint: str
    shared: str
    reports: int
    needed: int

    def line(self, label: Label, user: str) -> str:
        return (
            f"reported {label} for {user}: {self.result} (fingerprint {self.fingerprint}; "
            f"shared model: {self.shared}, {self.reports} of {self.needed} reports)"
        )


def read_token(path: Path | None) -> str:
    """The token from ``path``, else from the file ``MAILSIFT_TOKEN_FILE`` names.

    Never from the command line, where every local user could read it in the process list.
    """
    if path is None:
        named = os.environ.get("MAILSIFT_TOKEN_FILE", "").strip()
        if not named:
            raise ReportFailed(
                "no token: give --token-file FILE or set MAILSIFT_TOKEN_FILE", EXIT_USAGE
            )
        path = Path(named)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
        raise ReportFailed(f"cannot read the token file {path}: {reason}", EXIT_USAGE) from None
    if not token:
        raise ReportFailed(f"the token file {path} is empty", EXIT_USAGE)
    return token


def read_message(stream: IO[bytes], limit: int = MAX_MESSAGE_BYTES) -> bytes:
    """One raw message from ``stream``, refused past ``limit`` bytes rather than buffered."""
    raw = stream.read(limit + 1)
    if not raw.strip():
        raise ReportFailed("no message on standard input", EXIT_USAGE)
    if len(raw) > limit:
        raise ReportFailed(f"the message is larger than {limit} bytes", EXIT_USAGE)
    return raw


def send_report(
    raw: bytes, label: Label, user: str, target: ReportTarget, *, via: Via = "api"
) -> Reported:
    """Send ``raw`` as ``user``'s report; return once the service has acknowledged it."""
    url = target.url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ReportFailed(f"--url must start with http:// or https://, not {url!r}", EXIT_USAGE)
    try:
        with httpx.Client(timeout=target.timeout_seconds) as client:
            answer = client.post(
                f"{url}/v1/feedback",
                params={"label": label, "user": user, "via": via},
                content=raw,
                headers={
                    "Authorization": f"Bearer {target.token}",
                    "Content-Type": "message/rfc822",
                },
            )
    except httpx.HTTPError as exc:
        raise ReportFailed(
            f"the service at {url} did not answer: {_reason(exc)}", EXIT_TEMPFAIL
        ) from None
    return _acknowledged(answer)


def _acknowledged(answer: httpx.Response) -> Reported:
    try:
        body = answer.json()
    except ValueError:
        body = None
    if answer.status_code == 200 and isinstance(body, dict):
        shared = body.get("shared") or {}
        return Reported(
            result=str(body.get("result")),
            fingerprint=str(body.get("fingerprint")),
            shared=str(shared.get("result")),
            reports=int(shared.get("reports") or 0),
            needed=int(shared.get("needed") or 0),
        )
    detail = body.get("detail") if isinstance(body, dict) else None
    error = body.get("error") if isinstance(body, dict) else None
    what = f"{error}: {detail}" if error and detail else f"HTTP {answer.status_code}"
    status = EXIT_REFUSED if 400 <= answer.status_code < 500 else EXIT_TEMPFAIL
    if answer.status_code == 429:
        status = EXIT_TEMPFAIL  # rate-limited: the same report later is welcome
    line = f"the service refused the report ({answer.status_code} {what})"
    raise ReportFailed(" ".join(line.split()), status)


def _reason(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    cause = exc.__cause__ or exc.__context__
    text = str(cause or exc) or type(exc).__name__
    return " ".join(text.split())
