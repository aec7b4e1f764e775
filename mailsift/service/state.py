"""What one worker process holds for the lifetime of the app."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from mailsift.learning.learner import Learner
from mailsift.learning.outbound import OutboundQuota
from mailsift.learning.tail import LogTail
from mailsift.learning.trainlog import TrainingLog
from mailsift.service.accounts.store import AccountStore
from mailsift.service.alerts import Alerter
from mailsift.service.aliases.store import AliasStore
from mailsift.service.audit import AuditTrail
from mailsift.service.auth import FeedbackLimiter, TokenStore
from mailsift.service.dlp.config import DlpConfig
from mailsift.service.history import MessageHistory
from mailsift.service.lists.store import ListStore
from mailsift.service.monitor import GatewaySeen
from mailsift.service.pg.link import PgLink
from mailsift.service.rebuilds import RebuildScheduler
from mailsift.service.settings import Settings


@dataclass(slots=True)
class ServiceState:
    settings: Settings
    trainlog: TrainingLog
    learner: Learner
    state_engine: Engine
    accounts: AccountStore
    alerts: Alerter
    lists: ListStore
    aliases: AliasStore
    audit: AuditTrail
    dlp: DlpConfig
    outbound_quota: OutboundQuota
    tokens: TokenStore
    gateway_seen: GatewaySeen
    feedback_limiter: FeedbackLimiter
    rebuilds: RebuildScheduler
    history: MessageHistory
    tail: LogTail
    pg: PgLink | None = None
    """PostgreSQL: this worker's async pool and notification listener."""

    @property
    def model_ready(self) -> bool:
        n = self.settings.min_examples_per_class
        model = self.learner.model
        return model.n_ham >= n and model.n_spam >= n
