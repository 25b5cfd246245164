"""Prometheus exposition: chat families from the latest snapshot, plus self-metrics.

``SnapshotCollector`` keeps no state per scrape: each ``collect`` reads the
current immutable snapshot and yields fresh metric families. Chat families are
hidden until the first full sync, so no scrape sees a partial total. Live
request counters (``SelfMetrics``) are ordinary prometheus_client metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar

from collector import __version__
from collector.aggregates import EXEMPLAR_LABEL, Mark
from collector.aggregates import Histogram as Hist
from collector.build import REVISION
from collector.families import (
    AS_OF,
    CHAT,
    FAMILIES,
    GEN_AI_CONSTANTS,
    CounterFamily,
    Family,
    GaugeFamily,
    HistogramFamily,
    Known,
    SemConv,
)
from collector.state import FleetSnapshot, SessionState, Snapshot

TITLE_LIMIT = 64


ANOMALIES = ("short_pass", "pass_restarted", "timestamp_backwards")
"""``listing_anomalies_total{kind}``: a complete pass that listed under half of the watched sessions (nothing
retired), a pass that could not go on and started over, a ``last_updated_at`` that went backwards."""


COUNT_LAG_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
"""``count_lag_seconds``: DESIGN §5's buckets."""


AUTH_REFUSALS = ("missing", "wrong", "busy")
"""``scrape_auth_refusals_total{reason}``: see ``collector.auth``."""


class RateLimitRemaining(Collector):
    """``api_rate_limit_remaining``: the API's own remaining-requests header, as last seen; absent until one is."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.value: float | None = None
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        yield _gauge(
            "llamacloud_collector_api_rate_limit_remaining",
            "Requests the API says it still allows (its X-RateLimit-Remaining or like header, as last seen); "
            "absent while it sends none.",
            self.value,
        )


class SelfMetrics:
    """Counters the client and poller update as they go (an ``ApiObserver`` and a ``PollObserver``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        p = "llamacloud_collector_"
        self.api_requests = Counter(
            p + "api_requests",
            "API requests by operation and HTTP status (error for transport and protocol failures).",
            ["operation", "code"],
            registry=registry,
        )
        self.api_duration = Histogram(
            p + "api_request_duration_seconds",
            "API request latency, whole exchange.",
            ["operation"],
            registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.api_retries = Counter(
            p + "api_retries", "API requests retried, by operation and reason.", ["operation", "reason"], registry=registry
        )
        self.invalid_payloads = Counter(
            p + "invalid_payloads", "API answers that failed validation.", ["operation"], registry=registry
        )
        # what each project's poller reports (``ProjectObserver``), by project
        self.polls = Counter(p + "polls", "Poll cycles by result.", ["project_id", "result"], registry=registry)
        self.fetches = Counter(
            p + "session_fetches", "Sessions retrieved, by reason.", ["project_id", "reason"], registry=registry
        )
        self.sessions_unchanged = Counter(
            p + "sessions_unchanged",
            "Sessions skipped because last_updated_at did not change.",
            ["project_id"],
            registry=registry,
        )
        self.state_write_failures = Counter(
            p + "state_write_failures",
            "State store writes that failed (retried next cycle).",
            ["project_id"],
            registry=registry,
        )
        self.listing_anomalies = Counter(
            p + "listing_anomalies",
            "Listings the collector did not take at their word (DESIGN §4), by kind.",
            ["project_id", "kind"],
            registry=registry,
        )
        self.count_lag = Histogram(
            p + "count_lag_seconds",
            "How late new runs were counted: from their session's last_updated_at (the answer that brought them) "
            "to the commit that counted them; a timestamp ahead of this clock counts as 0.",
            ["project_id"],
            registry=registry,
            buckets=COUNT_LAG_BUCKETS,
        )
        self.budget_waits = Counter(
            p + "api_budget_wait_seconds",
            "Seconds API requests waited for the request budget (--max-requests-per-second, this shard's share) "
            "and for pauses a 429 asked for.",
            registry=registry,
        )
        self.rate_limit_left = RateLimitRemaining(registry)
        self.otlp_exports = Counter(
            p + "otlp_exports",
            "OTLP pushes of the chat families (--otlp-endpoint), by result: success, failure, or skipped while the "
            "last one still ran.",
            ["result"],
            registry=registry,
        )
        self.auth_refusals = Counter(
            p + "scrape_auth_refusals",
            "Requests to /metrics or / refused by basic auth, "
            "by reason: missing (no or malformed credentials), wrong (unknown user or wrong "
            "password), busy (no place to check them: a flood).",
            ["reason"],
            registry=registry,
        )
        for reason in AUTH_REFUSALS:
            self.auth_refusals.labels(reason)
        for result in OTLP_RESULTS:
            self.otlp_exports.labels(result)
        for operation in ("list", "summary", "retrieve"):
            self.invalid_payloads.labels(operation)

    def request(self, operation: str, code: str, seconds: float) -> None:
        self.api_requests.labels(operation, code).inc()
        self.api_duration.labels(operation).observe(seconds)

    def retry(self, operation: str, reason: str) -> None:
        self.api_retries.labels(operation, reason).inc()

    def invalid_payload(self, operation: str) -> None:
        self.invalid_payloads.labels(operation).inc()

    def otlp_export(self, result: str) -> None:
        self.otlp_exports.labels(result).inc()

    def budget_wait(self, seconds: float) -> None:
        self.budget_waits.inc(seconds)

    def rate_limit_remaining(self, value: float | None) -> None:
        self.rate_limit_left.value = value

    # what a poller reports when it is given these metrics themselves (tests, benchmarks): no project
    def poll(self, result: str) -> None:
        ProjectObserver(self, "").poll(result)

    def fetched(self, reason: str) -> None:
        ProjectObserver(self, "").fetched(reason)

    def unchanged(self, count: int) -> None:
        ProjectObserver(self, "").unchanged(count)

    def state_write_failed(self) -> None:
        ProjectObserver(self, "").state_write_failed()

    def anomaly(self, kind: str) -> None:
        ProjectObserver(self, "").anomaly(kind)

    def counted_late(self, lags: Iterable[float]) -> None:
        ProjectObserver(self, "").counted_late(lags)

    def project(self, project_id: str) -> None:
        """A project watched from now on: its known series at 0 (``""``: the key's default, not yet named)."""
        for kind in ANOMALIES:
            self.listing_anomalies.labels(project_id, kind)
        for result in POLL_RESULTS:
            self.polls.labels(project_id, result)
        for reason in FETCH_REASONS:
            self.fetches.labels(project_id, reason)
        for metric in (self.sessions_unchanged, self.state_write_failures, self.count_lag):
            metric.labels(project_id)

    def forget_project(self, project_id: str) -> None:
        """A project no longer watched (or named at last): its series go."""
        for metric in self.per_project:
            for key in [k for k in list(metric._metrics) if k[0] == project_id]:  # no public listing of children
                metric.remove(*key)

    @property
    def per_project(self) -> tuple[Counter | Histogram, ...]:
        return (
            self.polls,
            self.fetches,
            self.sessions_unchanged,
            self.state_write_failures,
            self.listing_anomalies,
            self.count_lag,
        )

    # what the web config's basic auth reports (auth.WebConfig)
    def auth_refused(self, reason: str) -> None:
        self.auth_refusals.labels(reason).inc()


POLL_RESULTS = ("success", "partial", "failure")
OTLP_RESULTS = ("success", "failure", "skipped")
FETCH_REASONS = ("new", "changed")


class ProjectObserver:
    """What one project's poller reports (``poller.PollObserver``), counted under its ``project_id``."""

    def __init__(self, metrics: SelfMetrics, project_id: str) -> None:
        self.metrics = metrics
        self.project_id = project_id
        """``""`` while the default project is unnamed; ``projects.Fleet`` sets its ID once it is named."""

    def poll(self, result: str) -> None:
        self.metrics.polls.labels(self.project_id, result).inc()

    def fetched(self, reason: str) -> None:
        self.metrics.fetches.labels(self.project_id, reason).inc()

    def unchanged(self, count: int) -> None:
        self.metrics.sessions_unchanged.labels(self.project_id).inc(count)

    def state_write_failed(self) -> None:
        self.metrics.state_write_failures.labels(self.project_id).inc()

    def anomaly(self, kind: str) -> None:
        self.metrics.listing_anomalies.labels(self.project_id, kind).inc()

    def counted_late(self, lags: Iterable[float]) -> None:
        lag = self.metrics.count_lag.labels(self.project_id)
        for seconds in lags:
            lag.observe(max(0.0, seconds))

    def invalid_payload(self, operation: str) -> None:
        self.metrics.invalid_payload(operation)  # the client's count: not by project


def _exemplar(mark: Mark | None) -> Exemplar | None:
    """OpenMetrics only: prometheus_client's text format leaves exemplars out."""
    return None if mark is None else Exemplar({EXEMPLAR_LABEL: mark.session_id}, mark.value, mark.timestamp)


def _histogram(name: str, doc: str, labels: list[str], series: list[tuple[list[str], Hist]]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, hist in series:
        buckets: list[Any] = [(le, count, _exemplar(mark)) if mark else (le, count) for le, count, mark in hist.cumulative()]
        family.add_metric(values, buckets, hist.total)
    return family


def _counter(name: str, doc: str, labels: list[str], values: Mapping[Any, float]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return family


def _gauge(name: str, doc: str, value: float | None, labels: dict[str, str] | None = None) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    if value is not None:
        family.add_metric(list((labels or {}).values()), value)
    return family


def _render(family: Family, snap: Snapshot, known: Known, suffix: str = "") -> Metric:
    """One family of ``FAMILIES``, from the snapshot; a counter's series ``known`` in advance at 0 while absent."""
    a, doc = snap.aggregates, family.help + suffix
    if isinstance(family, HistogramFamily):
        series = sorted(a.histos[family.stored].items(), key=lambda item: item[0] or "")
        return _histogram(family.name, doc, list(family.labels), [([k] if k else [], h) for k, h in series])
    if isinstance(family, CounterFamily):
        marks = a.marks.get(family.stored, {})
        metric = CounterMetricFamily(family.name, doc, labels=list(family.labels))
        values = a.counters[family.stored]
        shown = dict.fromkeys(family.known(known, a.counters), 0) | values
        for key, value in sorted(shown.items()):
            metric.add_metric(list(key) if isinstance(key, tuple) else [key], value, exemplar=_exemplar(marks.get(key)))
        return metric
    assert isinstance(family, GaugeFamily)
    return _gauge(family.name, doc, getattr(snap, family.snapshot))


GEN_AI_SHOWN = frozenset(name for f in CHAT if f.gen_ai is not None for name in (f.name, *f.gen_ai.covers))
"""The chat families whose counts show under GenAI names (``--semconv gen_ai``)."""


def _gen_ai(family: Family, snap: Snapshot, known: Known) -> Metric:
    """``family`` under its GenAI name (``families.GenAi``): its own series renamed, with ``GEN_AI_CONSTANTS``, or
    the series its ``GenAi.series`` reads from the counters. The same aggregates: never a second count."""
    gen = family.gen_ai
    assert gen is not None
    constants = dict(GEN_AI_CONSTANTS)
    doc = f"{family.help} (OpenTelemetry GenAI semantic conventions: --semconv){AS_OF}"
    out = Metric(gen.name, doc, family.type)
    if gen.series is not None:
        for pairs, value in gen.series(snap.aggregates.counters, known):
            out.add_sample(gen.name + "_total", {**constants, **dict(pairs)}, value)
        return out
    renamed = dict(gen.labels)
    for sample in _render(family, snap, known).samples:
        named = {**constants, **{renamed.get(k, k): v for k, v in sample.labels.items()}}
        out.samples.append(sample._replace(name=gen.name + sample.name[len(family.name) :], labels=named))
    return out


def _with_project(metrics: Iterable[Metric], project_id: str) -> Iterator[Metric]:
    """``metrics`` with ``project_id`` first in every sample's labels (an empty ID: left out, as Prometheus reads
    an empty label)."""
    for metric in metrics:
        if project_id:
            metric.samples = [s._replace(labels={"project_id": project_id, **s.labels}) for s in metric.samples]
        yield metric


def _merged(groups: Iterable[Iterable[Metric]]) -> Iterator[Metric]:
    """One family per name, in first-seen order, with the samples of every project's family of that name."""
    merged: dict[str, Metric] = {}
    for metrics in groups:
        for metric in metrics:
            first = merged.setdefault(metric.name, metric)
            if first is not metric:
                first.samples.extend(metric.samples)
    yield from merged.values()


class SnapshotCollector(Collector):
    def __init__(
        self,
        snapshot: Callable[[], FleetSnapshot],
        *,
        interval: float,
        expose_titles: bool,
        shard: int,
        total_shards: int,
        error_types: tuple[str, ...],
        semconv: SemConv,
    ) -> None:
        self._snapshot = snapshot
        self._semconv = semconv
        self._known = Known(error_types)
        self._interval = interval
        self._expose_titles = expose_titles
        self._shard = (shard, total_shards)

    def describe(self) -> list[Metric]:
        return []  # families depend on readiness; skip the registry's duplicate check

    def collect(self) -> Iterator[Metric]:
        fleet = self._snapshot()
        yield from self._global_families(fleet)
        yield from _merged(_with_project(self._project_families(p.snapshot), p.project_id) for p in fleet.projects)

    def _project_families(self, snap: Snapshot) -> Iterator[Metric]:
        yield from self._self_families(snap)
        if snap.ready:
            yield from self._chat_families(snap)
            yield from self._session_families(snap.sessions)

    def chat(self, fleet: FleetSnapshot) -> Iterator[Metric]:
        """The aggregated chat families of every synced project, as a scrape shows them (``--semconv``'s names,
        ``project_id``): what an OTLP push sends."""
        yield from _merged(
            _with_project(self._chat_families(p.snapshot), p.project_id) for p in fleet.projects if p.snapshot.ready
        )

    def _global_families(self, fleet: FleetSnapshot) -> Iterator[Metric]:
        p = "llamacloud_collector_"
        yield _gauge(p + "poll_interval_seconds", "The configured poll interval (--interval).", self._interval)
        yield _gauge(p + "shard", "This collector's shard (--shard).", self._shard[0])
        yield _gauge(p + "total_shards", "How many shards share the sessions (--total-shards).", self._shard[1])
        yield _gauge(
            p + "build_info",
            "Build information: version and source revision.",
            1.0,
            {"version": __version__, "revision": REVISION},
        )
        info = GaugeMetricFamily(
            "llamacloud_project_info",
            "The projects watched, by ID and name; always 1.",
            labels=["project_id", "project_name"],
        )
        for project in fleet.projects:
            if project.project_id:
                info.add_metric([project.project_id, project.name], 1.0)
        yield info

    def _self_families(self, snap: Snapshot) -> Iterator[Metric]:
        p, poll = "llamacloud_collector_", snap.poll
        yield _gauge(p + "up", "1 when the last poll reached the API and it answered.", 1.0 if poll.up else 0.0)
        yield _gauge(p + "last_success_timestamp_seconds", "When the last successful poll finished.", poll.last_success)
        yield _gauge(p + "poll_duration_seconds", "Duration of the last poll cycle.", poll.duration)
        yield _gauge(p + "sessions_watched", "Sessions this collector watches.", snap.sessions_watched)
        yield _gauge(
            p + "sessions_failing",
            "Sessions whose last fetch failed on their own (the API answered others); retried with backoff.",
            poll.sessions_failing,
        )
        yield _gauge(
            p + "listing_pass_duration_seconds",
            "Wall time of the last complete listing pass (every page, or every configured ID); it may span cycles.",
            poll.listing_pass_duration,
        )
        yield from (_render(family, snap, self._known) for family in FAMILIES if family not in CHAT)
        yield _counter(
            p + "history_resets",
            "Session histories that shrank or changed and were re-synced.",
            [],
            {(): snap.aggregates.history_resets},
        )
        dropped = GaugeMetricFamily(
            p + "series_dropped", "Sessions or label values over a limit, not exposed as their own series.", labels=["family"]
        )
        dropped.add_metric(["sessions"], snap.sessions_over_limit)
        dropped.add_metric(["tool"], snap.aggregates.tools.dropped)
        dropped.add_metric(["index_id"], snap.aggregates.indexes.dropped)
        yield dropped

    def _chat_families(self, snap: Snapshot) -> Iterator[Metric]:
        if self._semconv != "gen_ai":
            yield from (_render(family, snap, self._known, AS_OF) for family in CHAT)
        if self._semconv != "llamacloud":
            yield from (_gen_ai(family, snap, self._known) for family in CHAT if family.gen_ai is not None)
            if self._semconv == "gen_ai":  # what the GenAI names hold not, under our names
                yield from (_render(family, snap, self._known, AS_OF) for family in CHAT if family.name not in GEN_AI_SHOWN)

    def _session_families(self, sessions: tuple[SessionState, ...]) -> Iterator[Metric]:
        p = "llamacloud_chat_session_"
        info_labels = ["session_id", "shared_access", "index_ids"] + (["title"] if self._expose_titles else [])
        info = GaugeMetricFamily(p + "info", "Chat session information; always 1.", labels=info_labels)
        updated = GaugeMetricFamily(p + "last_updated_timestamp_seconds", "When the session last changed.", labels=["session_id"])
        runs = CounterMetricFamily(p + "runs", "Finished runs of the session by outcome.", labels=["session_id", "outcome"])
        tokens = CounterMetricFamily(
            p + "tokens", "Tokens used by the session's finished runs.", labels=["session_id", "token_type"]
        )
        duration = GaugeMetricFamily(
            p + "last_run_duration_seconds", "Duration of the last run (job_metadata).", labels=["session_id"]
        )
        last_tokens = GaugeMetricFamily(
            p + "last_run_tokens", "Tokens of the last run (job_metadata).", labels=["session_id", "token_type"]
        )
        turns = GaugeMetricFamily(p + "last_run_turns", "Turns of the last run (job_metadata).", labels=["session_id"])
        error = GaugeMetricFamily(p + "last_run_error", "1 when the last run failed (job_metadata).", labels=["session_id"])
        for s in sessions:
            sid = s.session_id
            values = [sid, s.shared_access or "", ",".join(s.index_ids)]
            if self._expose_titles:
                values.append((s.title or "")[:TITLE_LIMIT])
            info.add_metric(values, 1.0)
            if s.updated_ts is not None:
                updated.add_metric([sid], s.updated_ts)
            runs.add_metric([sid, "success"], s.runs_success)
            runs.add_metric([sid, "error"], s.runs_error)
            tokens.add_metric([sid, "input"], s.tokens_input)
            tokens.add_metric([sid, "output"], s.tokens_output)
            job = s.job
            if job is None:
                continue
            if job.duration_ms is not None:
                duration.add_metric([sid], job.duration_ms / 1000.0)
            if job.total_input_tokens is not None:
                last_tokens.add_metric([sid, "input"], job.total_input_tokens)
            if job.total_output_tokens is not None:
                last_tokens.add_metric([sid, "output"], job.total_output_tokens)
            if job.turns is not None:
                turns.add_metric([sid], job.turns)
            if job.is_error is not None:
                error.add_metric([sid], 1.0 if job.is_error else 0.0)
        yield from (info, updated, runs, tokens, duration, last_tokens, turns, error)
