"""Leak detection on its own: scan a message or a text without scoring or recording it."""

from __future__ import annotations

import logging
import re
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from mailsift.models.charsets import decode_declared
from mailsift.models.parse import parse_message
from mailsift.service.analysis import INLINE_SCAN_CHARS
from mailsift.service.deps import SettingsDep
from mailsift.service.dlp import DlpConfig, DlpReport, scan_message, scan_text
from mailsift.service.errors import UnusableMessage
from mailsift.service.http.body import MESSAGE_TYPES, read_message
from mailsift.service.offload import run_heavy
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


# A character takes at most four bytes in any charset honoured (UTF-32).
_BYTES_PER_CHAR = 4


def _decode(raw: bytes, content_type: str, max_chars: int) -> str:
    """A text/plain body in its declared charset if mail uses it, else UTF-8; only the
    bytes that can fill the ``max_chars`` scanned are decoded."""
    found = _CHARSET.search(content_type)
    room = max_chars * _BYTES_PER_CHAR
    declared = decode_declared(raw, found.group(1) if found else None, room)
    return declared if declared is not None else raw[:room].decode("utf-8", "replace")


def _scan(raw: bytes, content_type: str, settings: Settings, config: DlpConfig) -> DlpReport:
    if content_type.partition(";")[0].strip().lower() == "text/plain":
        return scan_text(_decode(raw, content_type, config.max_scan_chars), config)
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
    if len(raw) > min(settings.offload_bytes, INLINE_SCAN_CHARS):
        report = await run_heavy(request, _scan, raw, content_type, settings, dlp)
    else:
        report = _scan(raw, content_type, settings, dlp)
    # Types and counts only: samples are redacted, but logs need not carry even those.
    log.info(
        "dlp scan: %d chars, %s",
        report.scanned_chars,
        ", ".join(f"{f.type}x{f.count} {f.severity}" for f in report.findings) or "no findings",
    )
    return JSONResponse(report.as_dict())
