"""OTLP push (issue 29, item 2): each committed snapshot's chat families, pushed over OTLP/HTTP, equal the truth,
and a restart with state is not a reset.

No OTLP receiver runs here (Prometheus 2.42 has none): the receiver is in-process, and decodes what arrives with
the official ``opentelemetry-proto`` messages. What it checks: every pushed value against the simulator's truth,
the start time across a restart with ``--state-path``, the GenAI names and attributes, the resource, and that a
failing backend is counted and never holds back counting."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AGGREGATION_TEMPORALITY_CUMULATIVE
from prometheus_client.utils import floatToGoString

from collector.settings import load_settings
from collector.simulator.service import SimulatorService
from tests.helpers import assert_matches_truth, collecting, run_async, scrape, simulating, value

pytestmark = pytest.mark.tier("unit")


class Receiver:
    """An OTLP/HTTP metrics receiver: each request decoded with the official messages, or answered ``status``."""

    def __init__(self) -> None:
        self.requests: list[ExportMetricsServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        self.status = 200
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        if self.status != 200:
            return web.Response(status=self.status)
        self.requests.append(ExportMetricsServiceRequest.FromString(await request.read()))
        self.arrived.set()
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def next(self) -> ExportMetricsServiceRequest:
        self.arrived.clear()
        await asyncio.wait_for(self.arrived.wait(), 30)
        return self.requests[-1]


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[tuple[Receiver, str]]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/v1/metrics", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield receiver, f"http://127.0.0.1:{port}/v1/metrics"
    finally:
        await runner.cleanup()


def metrics(request: ExportMetricsServiceRequest) -> dict[str, Any]:
    (resource,) = request.resource_metrics
    (scope,) = resource.scope_metrics
    return {m.name: m for m in scope.metrics}


def attributes(point: Any) -> dict[str, str]:
    return {a.key: a.value.string_value for a in point.attributes}


def runs_by_outcome(pushed: dict[str, Any]) -> dict[str, float]:
    runs = pushed["llamacloud_chat_runs"]
    assert runs.sum.is_monotonic and runs.sum.aggregation_temporality == AGGREGATION_TEMPORALITY_CUMULATIVE
    return {attributes(p)["outcome"]: p.as_double or p.as_int for p in runs.sum.data_points}


BACK = {"gen_ai.invoke_agent.duration": "gen_ai_invoke_agent_duration_seconds"}
"""OpenTelemetry names whose Prometheus name gains a unit suffix (``s``); the others only change ``.`` to ``_``."""
ATTRIBUTES_BACK = {"error.type": "error_type"}


def as_scraped(request: ExportMetricsServiceRequest) -> dict[tuple[str, frozenset], float]:
    """The pushed points as Prometheus would store them: names and labels translated back (``.`` to ``_``, a
    unit ``s`` to ``_seconds``, ``_total`` on a monotonic sum), histograms as cumulative ``_bucket``, ``_count``
    and ``_sum``, ``project_id`` left out (as ``tests.helpers.parse`` leaves it out)."""
    out: dict[tuple[str, frozenset], float] = {}
    for name, metric in metrics(request).items():
        prom = BACK.get(name, name.replace(".", "_"))

        def labels(point: Any, **more: str) -> frozenset:
            pairs = {ATTRIBUTES_BACK.get(k, k.replace(".", "_")): v for k, v in attributes(point).items()}
            pairs.pop("project_id", None)
            return frozenset({**pairs, **more}.items())

        if metric.HasField("sum"):
            for p in metric.sum.data_points:
                out[(prom + "_total", labels(p))] = p.as_double or p.as_int
        elif metric.HasField("histogram"):
            for p in metric.histogram.data_points:
                running = 0
                for bound, count in zip([*p.explicit_bounds, float("inf")], p.bucket_counts, strict=True):
                    running += count
                    out[(prom + "_bucket", labels(p, le=floatToGoString(bound)))] = running
                out[(prom + "_count", labels(p))] = p.count
                out[(prom + "_sum", labels(p))] = p.sum
        elif metric.HasField("gauge"):
            for p in metric.gauge.data_points:
                out[(prom, labels(p))] = p.as_double or p.as_int
    return out


def truth(sim: SimulatorService) -> dict[str, float]:
    runs = sim.world.runs
    return {"error": sum(r.failed for r in runs), "success": sum(not r.failed for r in runs)}


def test_each_push_equals_the_truth_and_a_restart_with_state_keeps_the_start(tmp_path: Path):
    async def scenario():
        sim = SimulatorService(sessions=12, runs=3, seed=4, rate=0)
        state = str(tmp_path / "state.db")
        async with simulating(sim), receiving() as (receiver, url):
            async with collecting(sim, otlp_endpoint=url, state_path=state, semconv="both") as collector:
                await collector.run_slot()
                pushed = metrics(await receiver.next())
                assert runs_by_outcome(pushed) == truth(sim)
                scraped = await scrape(collector.port)
                assert_matches_truth(scraped, sim)
                back = as_scraped(receiver.requests[-1])
                chat = {k: v for k, v in scraped.items() if k[0].startswith(("llamacloud_chat_", "gen_ai_"))}
                chat = {k: v for k, v in chat.items() if not k[0].startswith("llamacloud_chat_session_")}
                assert back == chat, "every pushed value is what a scrape shows (and that, the truth)"
                (resource,) = receiver.requests[-1].resource_metrics
                names = {a.key: a.value.string_value for a in resource.resource.attributes}
                assert names["service.name"] == "llamacloud-collector" and names["service.instance.id"]
                duration = pushed["llamacloud_chat_run_duration_seconds"].histogram.data_points[0]
                assert duration.count == sum(r.duration_ms is not None for r in sim.world.runs)
                assert sum(duration.bucket_counts) == duration.count and len(duration.explicit_bounds) == 15
                started = duration.start_time_unix_nano
                genai = pushed["gen_ai.invoke_agent.duration"]
                assert genai.unit == "s" and genai.histogram.data_points[0].count == duration.count
                tokens = {attributes(p)["gen_ai.token.type"] for p in pushed["gen_ai.client.token.usage"].histogram.data_points}
                assert tokens == {"input", "output"}
                calls = pushed["gen_ai.invoke_agent.invocations"].sum.data_points
                failed = {attributes(p).get("error.type"): p.as_double or p.as_int for p in calls}
                assert failed.pop(None, None) == truth(sim)["success"] and sum(failed.values()) == truth(sim)["error"]
                assert all(attributes(p)["gen_ai.operation.name"] == "invoke_agent" for p in calls)
                assert value(await scrape(collector.port), "llamacloud_collector_otlp_exports_total", result="success") == 1
            for session in list(sim.world.sessions.values())[:4]:
                sim.world.add_run(session, fail=True)
            async with collecting(sim, otlp_endpoint=url, state_path=state, semconv="both") as collector:
                await collector.run_slot()
                pushed = metrics(await receiver.next())
                assert runs_by_outcome(pushed) == truth(sim), "a restart with state is not a reset"
                again = pushed["llamacloud_chat_run_duration_seconds"].histogram.data_points[0]
                assert again.start_time_unix_nano == started, "the series' start time survives the restart"

    run_async(scenario())


def test_a_failing_backend_is_counted_and_never_holds_back_counting():
    async def scenario():
        sim = SimulatorService(sessions=6, runs=2, seed=5, rate=0)
        async with simulating(sim), receiving() as (receiver, url):
            receiver.status = 503
            async with collecting(sim, otlp_endpoint=url, read_timeout=2.0) as collector:
                await collector.run_slot()
                assert collector.pusher is not None and collector.pusher.task is not None
                await asyncio.wait_for(collector.pusher.task, 60)
                samples = await scrape(collector.port)
                assert value(samples, "llamacloud_collector_otlp_exports_total", result="failure") == 1
                assert value(samples, "llamacloud_chat_runs_total", outcome="success") == truth(sim)["success"]
                receiver.status = 200
                await collector.run_slot()  # the next slot pushes the then latest snapshot
                assert runs_by_outcome(metrics(await receiver.next())) == truth(sim)

    run_async(scenario())


def test_the_standard_variables_give_the_endpoint_and_headers_and_a_header_value_is_never_logged():
    settings = load_settings({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otlp.example.test/otlp/"})
    assert settings.otlp_endpoint == "https://otlp.example.test/otlp/v1/metrics"
    both = {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://a.test", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "https://b.test/m"}
    assert load_settings({}, both).otlp_endpoint == "https://b.test/m"
    from collector.settings import otlp_secrets

    assert otlp_secrets({"OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Basic c2VjcmV0,x-scope=team"}) == ["Basic c2VjcmV0", "team"]
    from collector.errors import ConfigError

    with pytest.raises(ConfigError, match="otlp_endpoint"):
        load_settings({"otlp_endpoint": "ftp://nope"}, {})
