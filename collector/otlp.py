"""OTLP push (``--otlp-endpoint``, DESIGN §5): each committed snapshot's chat families, pushed over OTLP/HTTP.

The families are the exposition's (``SnapshotCollector.chat``: the same names, ``--semconv``, and values), turned
into the OpenTelemetry SDK's data types: a counter becomes a cumulative monotonic sum, a histogram an explicit-bucket
histogram, a gauge a gauge. Nothing is re-recorded into instruments: the exact totals come from the snapshot. The
SDK's exporter (``opentelemetry-exporter-otlp-proto-http``) sends them, so no protobuf is written here, and it reads
the standard ``OTEL_EXPORTER_OTLP_*`` variables (headers, timeout, compression).

A series' start time is when its project's counts began: kept in the state file (``Meta.counting_since``), so a
restart with ``--state-path`` is not a reset; without one, the process's start. A push runs in a thread after a
slot, one at a time: a slow or failing backend never holds back counting or scrapes; a failure is logged, counted
(``llamacloud_collector_otlp_exports_total{result}``) and the next slot pushes the then latest snapshot.

GenAI families (``--semconv gen_ai`` or ``both``) go under their OpenTelemetry names (``gen_ai.invoke_agent.duration``,
unit ``s``) and attribute names (``gen_ai.token.type``, ``error.type``), which Prometheus' OTLP translation turns
back into the names a scrape shows; ours go under their Prometheus names, unchanged by it.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Iterable, Mapping
from typing import Any

import structlog
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client.core import Metric as PromMetric

from collector import __version__
from collector.families import CHAT

OTEL_NAMES = {f.gen_ai.name: (f.gen_ai.otel, f.gen_ai.unit) for f in CHAT if f.gen_ai is not None}
"""A GenAI family's Prometheus name and its OpenTelemetry name and unit."""
OTEL_ATTRIBUTES = {
    "gen_ai_operation_name": "gen_ai.operation.name",
    "gen_ai_provider_name": "gen_ai.provider.name",
    "gen_ai_token_type": "gen_ai.token.type",
    "gen_ai_data_source_id": "gen_ai.data_source.id",
    "error_type": "error.type",
}
"""The GenAI families' label names and their attribute names (Prometheus writes ``.`` as ``_``)."""
SCOPE = InstrumentationScope("llamacloud-collector", __version__)


def resource(instance: str) -> Resource:
    """``service.name``, ``service.version`` and ``service.instance.id`` (Prometheus' ``job`` and ``instance``)."""
    return Resource.create(
        {"service.name": "llamacloud-collector", "service.version": __version__, "service.instance.id": instance}
    )


def instance_id(listen_port: int | str, shard: int) -> str:
    """This collector among others: its host (the pod's name on Kubernetes), port and shard."""
    return f"{socket.gethostname()}:{listen_port}/shard-{shard}"


def metrics_data(families: Iterable[PromMetric], starts: Mapping[str, float], now: float, where: Resource) -> MetricsData:
    """``families`` (the exposition's chat families, ``project_id`` on their samples) as OTLP data: each point's
    start is its project's (``starts``, seconds; ``""``: the only project unnamed), its time ``now``."""
    time_ns = int(now * 1e9)
    metrics = [m for m in (_metric(f, starts, time_ns) for f in families) if m is not None]
    scope = ScopeMetrics(scope=SCOPE, metrics=metrics, schema_url="")
    return MetricsData(resource_metrics=[ResourceMetrics(resource=where, scope_metrics=[scope], schema_url="")])


def _metric(family: PromMetric, starts: Mapping[str, float], time_ns: int) -> Metric | None:
    name, unit = OTEL_NAMES.get(family.name, (family.name, ""))
    renamed = OTEL_ATTRIBUTES if family.name in OTEL_NAMES else {}

    def attributes(labels: Mapping[str, str]) -> dict[str, Any]:
        return {renamed.get(k, k): v for k, v in labels.items()}

    def start(labels: Mapping[str, str]) -> int:
        return int(starts.get(labels.get("project_id", ""), time_ns / 1e9) * 1e9)

    data: Any
    if family.type == "counter":
        points = [
            NumberDataPoint(attributes(s.labels), start(s.labels), time_ns, s.value)
            for s in family.samples
            if s.name == family.name + "_total"
        ]
        data = Sum(points, AggregationTemporality.CUMULATIVE, is_monotonic=True)
    elif family.type == "histogram":
        data = Histogram(_histogram_points(family, attributes, start, time_ns), AggregationTemporality.CUMULATIVE)
    elif family.type == "gauge":
        data = Gauge([NumberDataPoint(attributes(s.labels), start(s.labels), time_ns, s.value) for s in family.samples])
    else:
        return None
    return Metric(name=name, description=family.documentation, unit=unit, data=data)


def _histogram_points(family: PromMetric, attributes: Any, start: Any, time_ns: int) -> list[HistogramDataPoint]:
    """A classic histogram's samples (cumulative ``_bucket`` by ``le``, ``_count``, ``_sum``) as one explicit-bucket
    point per label set: the buckets' own counts, the finite bounds."""
    series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for s in family.samples:
        key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        point = series.setdefault(key, {"buckets": [], "count": 0, "sum": 0.0})
        if s.name == family.name + "_bucket":
            point["buckets"].append((float(s.labels["le"]), s.value))
        elif s.name == family.name + "_count":
            point["count"] = int(s.value)
        elif s.name == family.name + "_sum":
            point["sum"] = s.value
    points = []
    for key, point in series.items():
        cumulative = sorted(point["buckets"])
        bounds = [le for le, _ in cumulative if not math.isinf(le)]
        counts, below = [], 0.0
        for _, running in cumulative:
            counts.append(int(running - below))
            below = running
        labels = dict(key)
        points.append(
            HistogramDataPoint(
                attributes=attributes(labels),
                start_time_unix_nano=start(labels),
                time_unix_nano=time_ns,
                count=point["count"],
                sum=point["sum"],
                bucket_counts=counts,
                explicit_bounds=bounds,
                min=None,  # type: ignore[arg-type]  # unknown from buckets: left unset, as OTLP allows
                max=None,  # type: ignore[arg-type]
            )
        )
    return points


class Pusher:
    """One push at a time, in a thread, after a slot; the outcome counted by ``result`` (``success``, ``failure``)."""

    def __init__(self, endpoint: str, counted: Any, where: Resource, exporter: OTLPMetricExporter | None = None) -> None:
        self.exporter = exporter or OTLPMetricExporter(endpoint=endpoint)
        self.resource = where
        """Who pushes (``resource``): fixed for the process."""
        self.counted = counted
        self.log = structlog.get_logger("collector.otlp")
        self.task: asyncio.Task[None] | None = None
        self.endpoint = endpoint

    def push(self, data: MetricsData) -> None:
        """Start a push of ``data``, unless one is still running (the next slot pushes the then latest)."""
        if self.task is not None and not self.task.done():
            self.counted("skipped")
            return
        self.task = asyncio.get_running_loop().create_task(self._push(data))

    async def _push(self, data: MetricsData) -> None:
        try:
            result = await asyncio.to_thread(self.exporter.export, data)
        except Exception as exc:  # noqa: BLE001 - a push never stops the collector
            self.counted("failure")
            self.log.warning("OTLP push failed; the next slot pushes again", error=f"{type(exc).__name__}: {str(exc)[:200]}")
            return
        ok = result == MetricExportResult.SUCCESS
        self.counted("success" if ok else "failure")
        if not ok:
            self.log.warning("OTLP push failed; the next slot pushes again", endpoint=self.endpoint)

    async def close(self) -> None:
        if self.task is not None and not self.task.done():
            await asyncio.wait({self.task}, timeout=5.0)
        await asyncio.to_thread(self.exporter.shutdown)
