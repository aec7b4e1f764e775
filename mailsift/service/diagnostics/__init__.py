"""Diagnostics: a report of pass / warn / fail checks, each with a one-line remedy.

``report.run_diagnostics`` gathers the facts and runs ``checks`` (the service) and
``dns_audit`` (the mail domains and sending addresses); the API and ``mailsift diagnose``
(``cli.diagnose_command``) both show its :class:`~report.DiagReport`.
"""

from mailsift.service.diagnostics.checks import DiagResult, Status
from mailsift.service.diagnostics.report import DiagReport, run_diagnostics

__all__ = ["DiagReport", "DiagResult", "Status", "run_diagnostics"]
