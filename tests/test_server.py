"""/healthz follows the poll loop's liveness, on an injected clock."""

from prometheus_client import CollectorRegistry

from collector.httpserver import Request
from collector.server import Endpoints
from collector.webconfig import WebConfig
from tests.helpers import run_async


class FakePoller:
    cycle_started = None
    cycle_finished = None


def test_healthz_fails_when_no_cycle_started_or_finished_for_three_intervals():
    now = [1000.0]
    poller = FakePoller()
    endpoints = Endpoints(CollectorRegistry(), poller, interval=60.0, web=WebConfig(None), monotonic=lambda: now[0])
    health = lambda: run_async(endpoints(Request("GET", "/healthz", {}, {}))).status  # noqa: E731
    assert health() == 200  # just started
    now[0] += 3 * 60 + 10
    assert health() == 503  # no cycle ever started: a stuck loop
    poller.cycle_started = now[0]
    assert health() == 200
    now[0] += 150
    assert health() == 200  # a long cycle, within 3 intervals
    now[0] += 40
    assert health() == 503  # started 190 s ago and never finished: stuck
    poller.cycle_finished = now[0]
    assert health() == 200
