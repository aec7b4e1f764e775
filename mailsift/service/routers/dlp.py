"""Leak detection on its own: scan a message or a text without scoring or recording it."""

from __future__ import annotations

import codecs
import contextlib
import logging
import re
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from mailsift.models.parse import parse_message
from mailsift.service.deps import SettingsDep
from mailsift.service.dlp import DlpConfig, DlpReport, scan_message, scan_text
from mailsift.service.errors import UnusableMessage
from mailsift.service.http.body import MESSAGE_TYPES, read_message
from mailsift.service.schemas import ERRORS
from mailsift.service.settings import Settings

router = APIRouter(prefix="/v1/dlp", tags=["dlp"])
log = logging.getLogger("mailsift.dlp")

_TYPES = MESSAGE_TYPES | {"text/plain"}
_CHARSET = re.compile(r"""(?i)charset\s*=\s*["']?([A-Za-z0-9._:-]{1,40})""")
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "message/rfc822": {"schema": {"type": "string", "format": "binary"}},
            "text/plain": {"schema": {"type": "string"}},
        },
    }
}


async def _dlp(request: Request) -> DlpConfig:
    config: DlpConfig = request.app.state.mailsift.dlp
    return config


Dlp = Annotated[DlpConfig, Depends(_dlp)]


class FindingOut(BaseModel):
    type: str
    count: int
    severity: Literal["low", "medium", "high"]
    confidence: float
    where: list[str]
    samples: list[str]


class DlpScanOut(BaseModel):
    findings: list[FindingOut]
    action: Literal["flag", "quarantine", "reject"] | None
    truncated: bool


def _decode(raw: bytes, content_type: str) -> str:
    """A text/plain body in its declared charset (UTF-8 when none or unknown)."""
    found = _CHARSET.search(content_type)
    codec = "utf-8"
    if found:
        with contextlib.suppress(LookupError):
            codec = codecs.lookup(found.group(1)).name
    try:
        return raw.decode(codec, "replace")
    except (LookupError, UnicodeError, ValueError):  # charset=base64 (not text), idna (no replace)
        return raw.decode("utf-8", "replace")


def _scan(raw: bytes, content_type: str, settings: Settings, config: DlpConfig) -> DlpReport:
    if content_type.partition(";")[0].strip().lower() == "text/plain":
        return scan_text(_decode(raw, content_type), config)
    msg = parse_message(raw, settings.parse_limits)
    if not msg.headers and not msg.text.strip():
        raise UnusableMessage(
            "no header fields and no text: this is not an RFC 5322 message "
            "(send Content-Type: text/plain to scan a bare text)"
        )
    return scan_message(msg, config)


@router.post("/scan", response_model=DlpScanOut, responses=ERRORS, openapi_extra=_BODY)
async def scan(request: Request, settings: SettingsDep, dlp: Dlp) -> JSONResponse:
    """Scan a raw message or a plain text for sensitive content; findings come redacted."""
    raw = await read_message(request, settings.max_message_bytes, types=_TYPES)
    content_type = request.headers.get("content-type", "")
    if len(raw) > settings.offload_bytes:
        report = await run_in_threadpool(_scan, raw, content_type, settings, dlp)
    else:
        report = _scan(raw, content_type, settings, dlp)
    # Types and counts only: samples are redacted, but logs need not carry even those.
    log.info(
        "dlp scan: %d chars, %s",
        report.scanned_chars,
        ", ".join(f"{f.type}x{f.count} {f.severity}" for f in report.findings) or "no findings",
    )
    return JSONResponse(report.as_dict())
