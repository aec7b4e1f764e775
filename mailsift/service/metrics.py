"""Prometheus metrics: traffic, verdicts, leaks, limits, authentication, learning.

Several uvicorn workers serve one port, and a scrape reaches only one of them, so the
numbers must be pooled: with ``PROMETHEUS_MULTIPROC_DIR`` set before this module is
first imported (``mailsift serve`` does it, see :func:`prepare_multiprocess_dir`),
every process writes its counters to files in that directory and a scrape adds them
up. Without it (one process, tests) they live in this process. Which of the two is in
force is decided by prometheus-client at import time, so this module asks it rather
than reading the environment again.

Gauges describe the state of one process (its model, its log position). They are set
by whoever measures them, right before a scrape (:func:`observe_model`) or every round
of the health watch, and pooled as ``mostrecent``: the freshest measurement wins, and
values left behind by exited workers lose to it.

Label values are bounded: route templates (never raw paths), known methods, status
classes, and the enumerations of verdicts, actions and limit names. Message content
and user names are never labels.
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.metrics_core import InfoMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailsift.learning.trainlog import TrainingLogError
from mailsift.reasons import LIMIT_PREFIX
from mailsift.service.accounts import LIMIT_NAMES
from mailsift.service.leftovers import METRICS_PREFIX

if TYPE_CHECKING:
    from mailsift.learning.learner import ModelStatus
    from mailsift.learning.trainlog import LogEntry
    from mailsift.service.checks.base import Reason
    from mailsift.service.dlp.scan import DlpReport

__all__ = [
    "MULTIPROCESS_DIR",
    "MULTIPROC_ENV",
    "MetricsMiddleware",
    "ModelFacts",
    "ModelHost",
    "exposition",
    "latency_buckets",
    "observe_auth_failure",
    "observe_health",
    "observe_model",
    "observe_request",
    "observe_verdict",
    "prepare_multiprocess_dir",
    "publish_model",
    "publish_tail",
    "read_model_facts",
]

log = logging.getLogger("mailsift.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Decided by prometheus-client when it was imported; setting the variable later changes
# nothing in this process (and then this process must not read the directory either).
MULTIPROCESS_DIR: str | None = (
    None if values.ValueClass is values.MutexValue else os.environ.get(MULTIPROC_ENV)
)

AuthFailureSource = Literal["api", "login"]
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_UNMATCHED = "unmatched"
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# The recent spam share follows roughly this many of a process's latest verdicts.
SHARE_WINDOW = 500

# ``*_created`` series exist only in single-process mode; leave them out of both.
disable_created_metrics()  # type: ignore[no-untyped-call]
_registry = CollectorRegistry()
if MULTIPROCESS_DIR is None:
    # Per-process CPU and memory only make sense for a single process.
    ProcessCollector(registry=_registry)

REQUESTS = Counter(
    "mailsift_http_requests",
    "HTTP requests answered, by method, route template and status class.",
    ["method", "route", "status"],
    registry=_registry,
)
LATENCY = Histogram(
    "mailsift_http_request_duration_seconds",
    "Time from request to the last byte of the response handed to the server.",
    ["method", "route", "status"],
    buckets=_LATENCY_BUCKETS,
    registry=_registry,
)
VERDICTS = Counter(
    "mailsift_verdicts",
    "Messages scored, by direction and verdict (spam share = spam / all).",
    ["direction", "verdict"],
    registry=_registry,
)
ACTIONS = Counter(
    "mailsift_actions",
    "Messages scored, by direction and the action returned to the gateway.",
    ["direction", "action"],
    registry=_registry,
)
SPAM_SHARE = Gauge(
    "mailsift_spam_share_recent",
    f"Share of spam among the last ~{SHARE_WINDOW} verdicts of the process that scored last.",
    ["direction"],
    multiprocess_mode="mostrecent",
    registry=_registry,
)
DLP_FINDINGS = Counter(
    "mailsift_dlp_findings",
    "Messages with a data-leak finding, by direction, finding type and severity.",
    ["direction", "type", "severity"],
    registry=_registry,
)
LIMIT_HITS = Counter(
    "mailsift_limit_hits",
    "Outbound messages deferred for exceeding a sending limit, by limit.",
    ["limit"],
    registry=_registry,
)
AUTH_FAILURES = Counter(
    "mailsift_auth_failures",
    "Authentication failures: api = requests refused with 401, "
    "login = failed mailbox logins reported by gateways.",
    ["source"],
    registry=_registry,
)
LOG_HEAD = Gauge(
    "mailsift_training_log_head",
    "Highest committed training-log position.",
    multiprocess_mode="mostrecent",
    registry=_registry,
)
LOG_POSITION = Gauge(
    "mailsift_training_log_position",
    "Training-log position the scraped worker's model includes.",
    multiprocess_mode="mostrecent",
    registry=_registry,
)
LOG_LAG = Gauge(
    "mailsift_training_log_lag_entries",
    "Training-log entries the scraped worker has not applied yet (head - position).",
    multiprocess_mode="mostrecent",
    registry=_registry,
)
LOG_BEHIND = Gauge(
    "mailsift_training_log_behind",
    "1 when the scraped worker has not been at the training log's head for "
    "MAILSIFT_REPLICA_BEHIND_SECONDS (entries unapplied, or the log unreadable), else 0.",
    multiprocess_mode="mostrecent",
    registry=_registry,
)
LOG_AT_HEAD_AGE = Gauge(
    "mailsift_training_log_at_head_age_seconds",
    "Seconds since the scraped worker last knew its model was at the training log's head.",
    multiprocess_mode="mostrecent",
    registry=_registry,
)
MODEL_EXAMPLES = Gauge(
    "mailsift_model_examples",
    "Examples the scraped worker's model has learned, by label.",
    ["label"],
    multiprocess_mode="mostrecent",
    registry=_registry,
)
MODEL_AGE = Gauge(
    "mailsift_model_age_seconds",
    "Seconds since the model last learned anything (newest log entry or snapshot); "
    "NaN when it never has.",
    multiprocess_mode="mostrecent",
    registry=_registry,
)
SNAPSHOT_AGE = Gauge(
    "mailsift_snapshot_age_seconds",
    "Seconds since the snapshot the scraped worker knows was written; NaN when none.",
    multiprocess_mode="mostrecent",
    registry=_registry,
)
SNAPSHOT_POSITION = Gauge(
    "mailsift_snapshot_log_position",
    "Training-log position included in that snapshot.",
    multiprocess_mode="mostrecent",
    registry=_registry,
)
GATEWAY_LAST_SEEN = Gauge(
    "mailsift_gateway_last_seen_timestamp_seconds",
    "When each configured gateway last called (Unix time; 0 = never).",
    ["gateway"],
    multiprocess_mode="mostrecent",
    registry=_registry,
)
DISK_FREE = Gauge(
    "mailsift_data_dir_free_bytes",
    "Free space on the file system of the data dir.",
    multiprocess_mode="mostrecent",
    registry=_registry,
)

# Zero series from the start, so rates and shares exist before the first event.
for _direction in ("inbound", "outbound"):
    for _verdict in ("ham", "suspect", "spam"):
        VERDICTS.labels(_direction, _verdict)
    for _action in ("accept", "tag", "quarantine", "reject", "defer"):
        ACTIONS.labels(_direction, _action)
for _limit in LIMIT_NAMES:
    LIMIT_HITS.labels(_limit)
for _source in ("api", "login"):
    AUTH_FAILURES.labels(_source)


# -- requests ---------------------------------------------------------------------------


def observe_request(scope: Scope, status: int, seconds: float) -> None:
    """Count one answered request under its route template and status class."""
    method = scope.get("method", "")
    method = method if method in _METHODS else "other"
    route = getattr(scope.get("route"), "path", None)
    labels = (method, route if isinstance(route, str) else _UNMATCHED, f"{status // 100}xx")
    REQUESTS.labels(*labels).inc()
    LATENCY.labels(*labels).observe(seconds)
    if status == 401:
        AUTH_FAILURES.labels("api").inc()


class MetricsMiddleware:
    """Pure ASGI middleware timing every HTTP request (streaming bodies pass untouched).

    The clock stops when the last body chunk is handed to the server, so background
    tasks that run after the response (outbound learning) do not count as latency. A
    request that fails before answering counts as a 500, which is what the client gets.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        done = False

        async def send_timed(message: Message) -> None:
            nonlocal status, done
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif (
                message["type"] == "http.response.body"
                and not message.get("more_body", False)
                and not done
            ):
                done = True
                observe_request(scope, status, time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_timed)
        finally:
            if not done:  # an exception, or the client went away mid-response
                observe_request(scope, status, time.perf_counter() - started)


# -- verdicts ---------------------------------------------------------------------------

_share: dict[str, tuple[float, int]] = {}

# The children every scored message touches, looked up once: labels() validates and
# locks on each call, a few microseconds a message. Few label values: direction x verdict.
_verdicts = functools.cache(VERDICTS.labels)
_actions = functools.cache(ACTIONS.labels)
_spam_share = functools.cache(SPAM_SHARE.labels)


def observe_verdict(
    direction: str,
    verdict: str,
    action: str,
    reasons: Sequence[Reason],
    dlp_report: DlpReport | None,
) -> None:
    """Count one scored message: verdict, action, leak findings and limit hits."""
    _verdicts(direction, verdict).inc()
    _actions(direction, action).inc()
    share, seen = _share.get(direction, (0.0, 0))
    seen = min(seen + 1, SHARE_WINDOW)
    share += ((verdict == "spam") - share) / seen
    _share[direction] = (share, seen)
    _spam_share(direction).set(share)
    if dlp_report is not None:
        for finding in dlp_report.findings:
            DLP_FINDINGS.labels(direction, finding.type, finding.severity).inc()
    for reason in reasons:
        limit = reason.name.removeprefix(LIMIT_PREFIX)
        if limit != reason.name and limit in LIMIT_NAMES:
            LIMIT_HITS.labels(limit).inc()


def observe_auth_failure(source: AuthFailureSource) -> None:
    """Count one authentication failure (``login``: a gateway reported a failed login)."""
    AUTH_FAILURES.labels(source).inc()


# -- model and health -------------------------------------------------------------------


class _Learner(Protocol):
    def status(self) -> ModelStatus: ...


class _Log(Protocol):
    def head(self) -> int: ...
    def read(self, after: int, limit: int = ...) -> Sequence[LogEntry]: ...


class ModelHost(Protocol):
    """The part of the service state the model metrics read."""

    @property
    def learner(self) -> _Learner: ...
    @property
    def trainlog(self) -> _Log: ...


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What one worker knows about its model and the training log."""

    version: str
    ham: int
    spam: int
    position: int
    """Log position this worker's model includes."""
    head: int | None
    """Highest committed log position; None when the log could not be read."""
    last_learned_at: float | None
    """Newest of: the newest log entry, the snapshot (a batch retrain publishes one)."""
    snapshot_position: int
    snapshot_created_at: float | None
    unsnapshotted_since: float | None
    """When the oldest log entry that no snapshot holds was written; None if none."""

    @property
    def lag(self) -> int | None:
        return None if self.head is None else max(0, self.head - self.position)


def read_model_facts(learner: _Learner, trainlog: _Log) -> ModelFacts:
    """Gather :class:`ModelFacts` (blocking: reads the log; call it from a thread)."""
    status = learner.status()
    head: int | None = None
    newest: float | None = None
    oldest: float | None = None
    try:
        head = trainlog.head()
        if head > 0:
            newest = _created_at(trainlog.read(head - 1, 1))
        if head > status.snapshot_position:
            oldest = _created_at(trainlog.read(status.snapshot_position, 1))
    except TrainingLogError as exc:
        log.error("model facts without the training log: %s", type(exc).__name__)
    times = [t for t in (newest, status.snapshot_created_at) if t is not None]
    return ModelFacts(
        version=status.version,
        ham=status.ham,
        spam=status.spam,
        position=status.log_position,
        head=head,
        last_learned_at=max(times) if times else None,
        snapshot_position=status.snapshot_position,
        snapshot_created_at=status.snapshot_created_at,
        unsnapshotted_since=oldest,
    )


def _created_at(entries: Sequence[LogEntry]) -> float | None:
    return entries[0].created_at if entries else None


_model_version: str | None = None


def publish_model(facts: ModelFacts, now: float | None = None) -> None:
    """Set the model and training-log gauges from ``facts``."""
    global _model_version
    now = time.time() if now is None else now
    _model_version = facts.version
    nan = math.nan
    LOG_HEAD.set(nan if facts.head is None else facts.head)
    LOG_POSITION.set(facts.position)
    LOG_LAG.set(nan if facts.lag is None else facts.lag)
    MODEL_EXAMPLES.labels("ham").set(facts.ham)
    MODEL_EXAMPLES.labels("spam").set(facts.spam)
    MODEL_AGE.set(nan if facts.last_learned_at is None else max(0.0, now - facts.last_learned_at))
    created = facts.snapshot_created_at
    SNAPSHOT_AGE.set(nan if created is None else max(0.0, now - created))
    SNAPSHOT_POSITION.set(facts.snapshot_position)


def observe_model(state: ModelHost, now: float | None = None) -> ModelFacts:
    """Measure this worker's model and publish it (blocking; the scrape handler calls it
    in a thread right before :func:`exposition`, so the scraped worker's view wins)."""
    facts = read_model_facts(state.learner, state.trainlog)
    publish_model(facts, now)
    return facts


class _Tail(Protocol):
    head: int

    def saw_head(self, head: int) -> None: ...
    def caught_up(self, position: int, *, at_end: bool) -> None: ...
    def behind(self, now: float | None = None) -> bool: ...
    def unconfirmed_seconds(self, now: float | None = None) -> float: ...


def publish_tail(tail: _Tail, facts: ModelFacts) -> None:
    """Set whether the worker is behind the log's head (``facts`` were read just now)."""
    if facts.head is not None:
        tail.saw_head(facts.head)
        tail.caught_up(facts.position, at_end=False)
    LOG_BEHIND.set(int(tail.behind()))
    LOG_AT_HEAD_AGE.set(tail.unconfirmed_seconds())


def observe_health(gateway_last_seen: dict[str, float | None], disk_free_bytes: int | None) -> None:
    """Set the gateway and disk gauges (the health watch calls it every round)."""
    for gateway, seen in gateway_last_seen.items():
        GATEWAY_LAST_SEEN.labels(gateway).set(0.0 if seen is None else seen)
    if disk_free_bytes is not None:
        DISK_FREE.set(disk_free_bytes)


class _ModelInfo:
    """``mailsift_model_info{version=…}`` of the scraped worker, built at scrape time
    (an info metric cannot be pooled across processes, and a gauge per version would
    leave a dead series behind for every version ever served)."""

    def collect(self) -> Iterable[Metric]:
        if _model_version is not None:
            yield InfoMetricFamily(
                "mailsift_model", "Model the scraped worker serves.", {"version": _model_version}
            )


class _Scrape:
    def __init__(self, *sources: Collector) -> None:
        self.sources = sources

    def collect(self) -> Iterable[Metric]:
        for source in self.sources:
            yield from source.collect()


def _pooled() -> Collector:
    return (
        _registry
        if MULTIPROCESS_DIR is None
        else MultiProcessCollector(None, path=MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]
    )


def latency_buckets(route: str, method: str = "POST") -> list[tuple[float, float]]:
    """Cumulative counts of ``route``'s successful requests under each latency bucket's
    upper bound, pooled over every worker (blocking in multiprocess mode); [] if none."""
    wanted = {"method": method, "route": route, "status": "2xx"}
    pooled: dict[float, float] = {}
    for metric in _pooled().collect():
        if metric.name != LATENCY._name:
            continue
        for sample in metric.samples:
            labels = sample.labels
            ours = all(labels.get(k) == v for k, v in wanted.items())
            if ours and sample.name.endswith("_bucket"):
                bound = float(labels["le"])
                pooled[bound] = pooled.get(bound, 0.0) + sample.value
    return sorted(pooled.items())


def exposition() -> tuple[bytes, str]:
    """Every metric in the text exposition format, and its content type (blocking in
    multiprocess mode: it reads every worker's files)."""
    return generate_latest(_Scrape(_pooled(), _ModelInfo())), CONTENT_TYPE_LATEST


# -- several workers --------------------------------------------------------------------


def prepare_multiprocess_dir(data_dir: Path) -> Path:
    """Give the workers about to be started an empty ``<data_dir>/metrics-<pid>`` and
    point ``PROMETHEUS_MULTIPROC_DIR`` at it (removed again when this process exits).

    Directories of earlier runs whose process is gone are removed before, by
    :func:`~mailsift.service.leftovers.clean_leftovers` (stale files would be added to
    the new ones). Call it
    in the parent before the workers are spawned; it has no effect on this process.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"{METRICS_PREFIX}{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    os.environ[MULTIPROC_ENV] = str(path)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
