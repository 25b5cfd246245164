"""An in-memory stand-in for the API client, and a poller on it with injected clocks, for in-process tests."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

from prometheus_client import CollectorRegistry

from collector.aggregates import Buckets
from collector.derive import ErrorClassifier
from collector.llamacloud.listing import Listing, read_listing
from collector.llamacloud.models import SessionPage, Summary, parse_page, parse_session
from collector.metrics import SelfMetrics
from collector.poller import Poller
from collector.selection import PollConfig
from collector.settings import Settings
from collector.state import MemoryStore
from collector.wiring import wire
from tests.helpers import run_async

BUCKETS = Buckets({"duration": (1.0, 10.0), "tokens": (10.0, 100.0), "turns": (1.0, 4.0), "tool_calls": (0.0, 2.0)})


def run_events(failed: bool = False, tool: str | None = None) -> list[dict]:
    events: list[dict] = [{"type": "user_input", "content": "q"}]
    if tool:
        events += [
            {"type": "tool_call", "name": tool, "call_id": "c", "arguments": {}},
            {"type": "tool_result", "name": tool, "call_id": "c", "result": "r"},
        ]
    usage = {"duration_ms": 500, "total_input_tokens": 5, "total_output_tokens": 7, "turns": 1}
    return [*events, {"type": "stop", "is_error": failed, "error": "boom" if failed else None, "usage": usage}]


class FakeApi:
    """What a poller reads of the API, in memory. ``answers[sid]`` queues one-off retrieve answers
    (a body dict, or an exception to raise); ``summary_errors`` makes ``summary`` fail for an ID."""

    def __init__(self) -> None:
        self.sessions: dict[str, dict] = {}
        self.listed: list[str] | None = None
        self.answers: dict[str, list] = {}
        self.summary_errors: dict[str, Exception] = {}
        self.retrieved: Counter = Counter()
        self.fetch_order: list[str] = []
        """Each ``retrieve`` as it began."""
        self.deadlines: list = []
        self.list_delay = 0.0
        self.retrieve_delay = 0.0
        self.slow: set[str] = set()
        """Sessions whose retrieve takes ``retrieve_delay``; all of them when empty."""
        self.large: set[str] | bool = set()
        """Sessions answered as large bodies are: parsed and counted in a thread (``True``: all of them)."""
        self.summaries: Counter = Counter()
        self.page_size = 1000
        self.pages_listed = 0
        self.pages_recalled = 0
        """Pages the poller's memo knew byte for byte (taken unparsed)."""
        self.list_errors: list[Exception] = []
        self.on_list: Callable[[], object] | None = None
        """Called at each page: a test moves its clocks here."""

    def put(self, sid: str, updated: str, events: list[dict]) -> None:
        self.sessions[sid] = {"session_id": sid, "last_updated_at": updated, "events": events}

    def _summary(self, sid: str) -> dict:
        return {k: v for k, v in self.sessions[sid].items() if k != "events"}

    async def list_page(self, token=None, deadline=None, recall=None) -> SessionPage:
        """``page_size`` sessions after ``token`` (an offset); a listing error queued in ``list_errors`` first."""
        self.deadlines.append(deadline)
        self.pages_listed += 1
        await asyncio.sleep(0)  # a real page is an await: the fetches run meanwhile
        if self.on_list is not None:
            self.on_list()
        if self.list_delay:
            await asyncio.sleep(self.list_delay)
        if self.list_errors:
            raise self.list_errors.pop(0)
        ids = self.listed if self.listed is not None else list(self.sessions)
        start = int(token or 0)
        end = start + self.page_size
        body = {"items": [self._summary(i) for i in ids[start:end]], "next_page_token": str(end) if end < len(ids) else None}
        raw = json.dumps(body).encode()
        known = None if recall is None else recall(raw)  # the poller's memo of pages, as the real client asks it
        self.pages_recalled += known is not None
        return known or parse_page(raw)

    async def list_sessions(self, deadline=None, wanted=None) -> Listing:
        """The listing as ``check`` reads it: the poller's listing loop, run to its end."""
        return await read_listing(self.list_page, deadline, wanted)

    async def summary(self, sid: str, deadline=None):
        self.deadlines.append(deadline)
        self.summaries[sid] += 1
        if sid in self.summary_errors:
            raise self.summary_errors[sid]
        return Summary.model_validate(self._summary(sid))

    async def retrieve(self, sid: str, deadline=None, off_loop=None):
        """The session's history; one in ``large`` (or every one, with ``large=True``) is given to ``off_loop`` in
        a thread, as the real client does with a body over ``LARGE_BODY``."""
        self.deadlines.append(deadline)
        self.fetch_order.append(sid)
        await asyncio.sleep(0)
        if self.retrieve_delay and (not self.slow or sid in self.slow):
            await asyncio.sleep(self.retrieve_delay)
        self.retrieved[sid] += 1
        queued = self.answers.get(sid)
        body = queued.pop(0) if queued else self.sessions[sid]
        if isinstance(body, Exception):
            raise body
        session = parse_session(json.dumps(body).encode())
        large = self.large is True or (self.large is not False and sid in self.large)
        if off_loop is not None and large and session.session_id == sid:
            return await asyncio.to_thread(off_loop, lambda: session)
        return session


def poller(api: FakeApi, now: list[float] | None = None, monotonic=None, interval: float = 60.0, **config) -> Poller:
    clock = (lambda: now[0]) if now is not None else (lambda: 1000.0)
    return Poller(
        api,
        MemoryStore(),
        poll_config(interval=interval, buckets=BUCKETS, **config),
        ErrorClassifier(),
        unnamed_project(SelfMetrics(CollectorRegistry())),
        clock=clock,
        **({"monotonic": monotonic} if monotonic else {}),
    )


def unnamed_project(metrics: SelfMetrics) -> SelfMetrics:
    """``metrics`` with the series of a poller given them directly (no project) at 0, as a project's are."""
    metrics.project("")
    return metrics


def self_metrics(p: Poller) -> SelfMetrics:
    """What ``p`` reports to, as ``poller`` builds it: the collector's own metrics."""
    assert isinstance(p.metrics, SelfMetrics)
    return p.metrics


def cycle(p: Poller):
    return run_async(p.cycle())


def total_runs(p: Poller) -> int:
    return sum(p.state.aggregates.runs.values())


def poll_config(**overrides) -> PollConfig:
    """A poller's config as the default settings give it, with ``overrides``."""
    return replace(wire(Settings()).poll, **overrides)
