"""Data-leak detection: find card numbers, IBANs, SSNs, keys and secrets, report them redacted.

``load_dlp_config(settings)`` once at start-up; ``scan_message(parsed, config)`` per
message gives a :class:`DlpReport` whose findings carry only redacted samples.
"""

from mailsift.service.dlp.config import DlpAction, DlpConfig, DlpConfigError, load_dlp_config
from mailsift.service.dlp.detectors import Severity
from mailsift.service.dlp.scan import DlpReport, Finding, scan_message, scan_text

__all__ = [
    "DlpAction",
    "DlpConfig",
    "DlpConfigError",
    "DlpReport",
    "Finding",
    "Severity",
    "load_dlp_config",
    "scan_message",
    "scan_text",
]
