"""``mailsift report`` and ``mailsift label``: teaching the service from the command line.

``report``: one user's report from their mail store (Dovecot's Junk folder).

Users report spam by moving mail into Junk, and mistakes by moving it out; Dovecot's
IMAPSieve pipes the message to a program and kills it after about ten seconds. This
sends it to ``POST /v1/feedback`` as that user's report and succeeds only once the
service has acknowledged it (durably on the training log). Every failure is one line
and an exit status a script can act on (:class:`ReportFailed`), never a traceback.

``label``: an administrator labels a recently scored message by its fingerprint alone
(``POST /v1/history/{fingerprint}/label`` on the admin listener).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import httpx

from mailsift.models.fingerprint import is_fingerprint

__all__ = [
    "DEFAULT_ADMIN_URL",
    "DEFAULT_URL",
    "EXIT_REFUSED",
    "EXIT_TEMPFAIL",
    "EXIT_USAGE",
    "MAX_MESSAGE_BYTES",
    "ReportFailed",
    "ReportTarget",
    "Reported",
    "label_from_history",
    "read_message",
    "read_token",
    "send_report",
]

Label = Literal["spam", "ham"]
Via = Literal["api", "imap"]

DEFAULT_URL = "http://127.0.0.1:8470"
DEFAULT_ADMIN_URL = "http://127.0.0.1:8471"
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
    if not (token.isascii() and token.isprintable()) or " " in token:
        raise ReportFailed(f"the token file {path} does not hold one token", EXIT_USAGE)
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
    body = _post(
        target,
        "/v1/feedback",
        {"label": label, "user": user, "via": via},
        raw,
        what="the report",
    )
    shared = body.get("shared") or {}
    return Reported(
        result=str(body.get("result")),
        fingerprint=str(body.get("fingerprint")),
        shared=str(shared.get("result")),
        reports=int(shared.get("reports") or 0),
        needed=int(shared.get("needed") or 0),
    )


def label_from_history(fingerprint: str, label: Label, target: ReportTarget) -> str:
    """Label a recently scored message by fingerprint; what the log did with it."""
    if not is_fingerprint(fingerprint):
        raise ReportFailed(
            "the fingerprint must be the 32 hex characters a score answer gave", EXIT_USAGE
        )
    body = _post(
        target, f"/v1/history/{fingerprint}/label", {"label": label}, None, what="the label"
    )
    held = f", held by {body['held_by']}" if body.get("held_by") else ""
    return f"labelled {fingerprint} {label}: {body.get('result')}{held}"


def _post(
    target: ReportTarget, path: str, params: dict[str, str], raw: bytes | None, *, what: str
) -> dict[str, Any]:
    url = target.url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ReportFailed(f"--url must start with http:// or https://, not {url!r}", EXIT_USAGE)
    headers = {"Authorization": f"Bearer {target.token}"}
    if raw is not None:
        headers["Content-Type"] = "message/rfc822"
    try:
        with httpx.Client(timeout=target.timeout_seconds) as client:
            answer = client.post(f"{url}{path}", params=params, content=raw, headers=headers)
    except httpx.HTTPError as exc:
        raise ReportFailed(
            f"the service at {url} did not answer: {_reason(exc)}", EXIT_TEMPFAIL
        ) from None
    try:
        body = answer.json()
    except ValueError:
        body = None
    if answer.status_code == 200 and isinstance(body, dict):
        return body
    detail = body.get("detail") if isinstance(body, dict) else None
    error = body.get("error") if isinstance(body, dict) else None
    reason = f"{error}: {detail}" if error and detail else f"HTTP {answer.status_code}"
    status = EXIT_REFUSED if 400 <= answer.status_code < 500 else EXIT_TEMPFAIL
    if answer.status_code == 429:
        status = EXIT_TEMPFAIL  # rate-limited: the same request later is welcome
    line = f"the service refused {what} ({answer.status_code} {reason})"
    raise ReportFailed(" ".join(line.split()), status)


def _reason(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    cause = exc.__cause__ or exc.__context__
    text = str(cause or exc) or type(exc).__name__
    return " ".join(text.split())
