"""An adversarial model of the whole poll loop (issue 26, item 2), checked by hypothesis.

``tests/test_model.py`` models the counting core on the in-memory client. This machine drives the real
thing end to end: the real ``Poller``, the real ``LlamaCloudClient`` over ``httpx.MockTransport`` into an
in-process fake of the chat API (``FakeChatApi``: ``GET /api/v1/chat`` with ``page_size``/``page_token``,
``/api/v1/chat/{id}`` and ``/summary``), and the real ``SqliteStore`` in a temporary directory, restarted
on the same file (a new client, store and poller), sometimes with other buckets, error rules or label
limit. The clocks are fixed, the client tries once and never sleeps, so nothing waits.

The upstream misbehaves as real ones do: sessions are created, runs finish (failed with error texts, tool
calls with and without results, tokens, unknown event types, refused values), sessions are deleted and
come back, or are re-created with the same ID and another history; a listing answers empty once, ends
early, repeats a token, returns an empty page, lists newest first or in an unstable order, repeats items
across pages, sends short pages, refuses a token it issued (HTTP 400) or fails pages (503) for a few
cycles; ``last_updated_at`` jumps ahead and is corrected (backwards), or stays while the events change;
reads are cut short or come from a lagging replica; bodies pass 1 MiB (a big unknown field placed before
``events`` holding a decoy ``events`` array, one after it, or a long text); extreme values (Go's zero
time, a title over 64 KiB, 2^53 tokens).

The model shares no code with ``collector/``. It knows every run and event upstream and computes, per
DESIGN §4, what the collector may count (every stop that was ever readable, minus those a re-sync took
as already counted) and what it must count once the upstream heals. Read from the rendered exposition
after every step:
- counters never decrease (chat families, ``_count``, ``_sum``, ``+Inf``; finite buckets except across a
  change of bounds, which re-derives them);
- nothing exceeds what was readable (no run, token, event or tool call counted twice);
- the errors by type add up to the failed runs whenever the collector is synced;
- a session still upstream loses its series only when two consecutive complete passes did not list it,
  and not after one short pass (DESIGN "One listing is never trusted alone");
- a restart never finds its own state file refused (no ``*.corrupt-*`` file appears).
``heal`` (a rule, before every quiet change, and at the end of each example) stops the faults and keeps the
listing stable: within ``HEAL_CYCLES`` cycles everything equals the truth exactly, the watched sessions are
exactly those upstream, none is failing, and the collector is ready.

Profiles: the default runs in the unit tier (``SHORT``, derandomized, well under a minute on 2 cores);
``HYPOTHESIS_PROFILE=long`` runs thousands of random examples (docs/testing.md). The counterexamples it
found are kept below as plain ``test_finding_*`` tests on the same machinery.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import random
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
import structlog
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.utils import floatToGoString

from collector.app import build_client
from collector.derive import DEFAULT_ERROR_RULES, ErrorClassifier, RunRecord, ToolCall
from collector.families import HISTOGRAMS as FAMILY_TABLE
from collector.llamacloud.client import LlamaCloudClient, RetryPolicy
from collector.metrics import SelfMetrics, SnapshotCollector
from collector.poller import Poller
from collector.settings import Settings
from collector.state import one_project
from collector.storage.sqlite import SqliteStore
from collector.wiring import arguments, wire
from tests.helpers import Samples

pytestmark = pytest.mark.tier("unit")

SHORT = settings(
    max_examples=40,
    stateful_step_count=25,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
LONG = settings(max_examples=3000, stateful_step_count=50, deadline=None, suppress_health_check=list(HealthCheck))
PROFILE = LONG if os.environ.get("HYPOTHESIS_PROFILE") == "long" else SHORT

WALL = 1_800_000_000.0
"""The poller's wall clock, fixed."""
MONO = 500.0
"""Its monotonic clock, fixed: no deadline ever passes, so no cycle is cut (nothing waits)."""
HEAL_CYCLES = 16
"""Cycles a healed upstream gets: 6 passes, after the longest per-session backoff (10 intervals)."""
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
AHEAD = 3600
"""Seconds a fast upstream clock is ahead until it is corrected."""
ZERO_TIME = "0001-01-01T00:00:00Z"
"""Go's zero time, as an API written in Go sends an unset time."""
BIG = (1 << 20) + 4096
"""Just past the 1 MiB over which the client parses a body by its other path."""
IDS = [f"s{i}" for i in range(6)]
TOOLS = ("search", "calc", "fetch", "browse")
INDEXES = ("idx-a", "idx-b")
ERRORS = (
    "request timed out",
    "rate limit exceeded",
    "context length exceeded",
    "quota exceeded: billing",
    "the tool failed",
    "boom",
    None,
)
KNOWN_EVENTS = ("user_input", "thinking_delta", "thinking", "text_delta", "text", "tool_call", "tool_result", "stop")
DECOY = [
    {"type": "user_input", "content": "not the history"},
    {"type": "stop", "is_error": False, "usage": {"duration_ms": 1, "total_input_tokens": 1}},
] * 3

BUCKET_SETS = [
    {"duration": [1.0, 10.0], "tokens": [10.0, 100.0], "turns": [1.0, 4.0], "tool_calls": [0.0, 2.0]},
    {"duration": [0.5, 5.0], "tokens": [8.0, 80.0], "turns": [2.0], "tool_calls": [1.0, 3.0]},
    {"duration": [2.0], "tokens": [50.0], "turns": [1.0, 2.0, 8.0], "tool_calls": [0.0]},
]
RULE_SETS = [
    [list(r) for r in DEFAULT_ERROR_RULES],
    [["billing", "billing"], *[list(r) for r in DEFAULT_ERROR_RULES]],  # a rule added in front
    [["timeout", r"time[d ]?\s?out|timeout|deadline exceeded"], ["quota", "quota|billing"]],  # the README's
]
LABEL_LIMITS = [50, 1, 2]

RUN_SPEC = st.tuples(
    st.booleans(),  # failed
    st.integers(0, len(ERRORS) - 1),  # its error text
    st.lists(st.tuples(st.integers(0, len(TOOLS) - 1), st.booleans()), max_size=2),  # tool calls, answered?
    st.sampled_from(["ok", "ok", "missing", "negative"]),  # duration
    st.sampled_from(["ok", "ok", "missing"]),  # tokens
    st.sampled_from(["none", "thinking", "text", "unknown"]),  # another event in the run
)
RunSpec = tuple[bool, int, list[tuple[int, bool]], str, str, str]
"""A run as ``RUN_SPEC`` draws it."""


# -- the upstream -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """A finished run as the model counts it: its values as first published (a rewrite is not recounted)."""

    rid: int
    failed: bool
    duration: float | None
    tokens_in: int | None
    tokens_out: int | None
    turns: int
    tools: tuple[tuple[str, bool], ...]


def event_label(event: dict) -> str:
    return event["type"] if event["type"] in KNOWN_EVENTS else "_unknown"


@dataclass
class Sess:
    """One session upstream, and what the model knows the collector may and must count of it.

    Within an *epoch* the history only grows (reads may still be cut short or lag). A quiet change (a
    rewritten stop, a re-created session) starts a new epoch: the collector, which had counted everything,
    reads the new history once as a reset and takes what it shows as counted (DESIGN §4); runs after that
    position are owed once the history is at least as long as what was counted before (``gate``)."""

    sid: str
    index_ids: tuple[str, ...]
    events: list[dict] = field(default_factory=list)
    rids: list[int | None] = field(default_factory=list)
    """The run each event's stop finishes (None for other events), parallel to ``events``."""
    open: bool = False
    ts: str = ""
    true_time: int = 0
    """The upstream's true time of the current version (orders the newest-first listing)."""
    title: str = "a chat"
    pad: str | None = None
    deleted: bool = False
    epoch: int = 0
    versions: list[tuple[str, int]] = field(default_factory=list)
    """(timestamp, history length) of each version published in this epoch: what a lagging replica sends."""
    base_stop: int = 0
    base_events: int = 0
    gate: int = 0
    banked_min: set[int] = field(default_factory=set)
    banked_max: set[int] = field(default_factory=set)
    banked_events_min: Counter = field(default_factory=Counter)
    banked_events_max: Counter = field(default_factory=Counter)
    observed: int = 0
    """The longest history of this epoch the collector read in a cycle it committed."""
    reads: int = 0
    """Cycles the collector committed that read this epoch's history."""
    ts_contents: dict[str, set[tuple[int, int]]] = field(default_factory=dict)
    """Every (epoch, length) sent under each timestamp: a timestamp sent with two contents hides a change."""

    def stops(self, start: int, end: int | None = None) -> set[int]:
        return {rid for rid in self.rids[start:end] if rid is not None}

    def types(self, start: int, end: int | None = None) -> Counter:
        return Counter(event_label(e) for e in self.events[start:end])

    def owed(self) -> tuple[set[int], set[int], Counter, Counter]:
        """(runs it must count once healed, runs it may count, the same for events)."""
        readable_runs = self.banked_max | self.stops(self.base_stop)
        readable_events = self.banked_events_max + self.types(self.base_events)
        end = self.observed if self.deleted else len(self.events)
        if end >= self.gate:
            runs = self.banked_min | self.stops(self.base_stop, end)
            events = self.banked_events_min + self.types(self.base_events, end)
        else:
            runs, events = set(self.banked_min), Counter(self.banked_events_min)
        return runs, readable_runs, events, readable_events

    def note(self, ts: str, length: int) -> None:
        self.ts_contents.setdefault(ts, set()).add((self.epoch, length))

    def ambiguous(self) -> bool:
        return len(self.ts_contents.get(self.ts, set()) | {(self.epoch, len(self.events))}) > 1


@dataclass
class PassLog:
    listed: set[str] = field(default_factory=set)
    ended: bool = False


class FakeChatApi:
    """The chat API in process, as an ``httpx.MockTransport`` handler, with the faults the rules queue."""

    def __init__(self, seed: int) -> None:
        self.sessions: dict[str, Sess] = {}
        self.rng = random.Random(seed)
        self.order = "oldest"
        self.short_pages = False
        self.duplicates = False
        self.token_epoch = 0
        self.salt = 0
        self.empty_once = False
        self.truncate_once = False
        self.loop_once = False
        self.empty_page_once = False
        self.fail_pages = 0
        """Pages after the first that answer 503."""
        self.fail_first = 0
        """First pages that answer 503."""
        self.deploy = False
        """The next page after the first answers 503 during a deploy that forgets every token it issued."""
        self.answers: dict[str, list] = {}
        """Per session, queued retrieve faults: 503, ("cut", length) or ("lag", version index)."""
        self.served: list[tuple[str, int, int]] = []
        """(session, epoch, history length) of each history sent this cycle."""
        self.passes: list[PassLog] = []
        self.requests: Counter[str] = Counter()

    def heal(self) -> None:
        self.order, self.short_pages, self.duplicates = "oldest", False, False
        self.empty_once = self.truncate_once = self.loop_once = self.empty_page_once = False
        self.fail_pages = self.fail_first = 0
        self.deploy = False
        self.answers.clear()

    # -- bodies -------------------------------------------------------------------------------------------

    def summary(self, s: Sess, ts: str, length: int) -> dict:
        job = None
        stops = [e for e in s.events[:length] if e["type"] == "stop"]
        if stops:
            last = stops[-1]
            job = {**last["usage"], "is_error": last["is_error"], "error": last.get("error")}
        return {
            "session_id": s.sid,
            "last_updated_at": ts,
            "generated_title": s.title,
            "index_ids": list(s.index_ids) or None,
            "shared_access": "query",
            "job_metadata": job,
        }

    def body(self, s: Sess, ts: str, length: int) -> bytes:
        out: dict = {}
        if s.pad == "unknown_before":  # a big unknown field before the real history, with a decoy inside
            out["debug"] = {"events": DECOY, "blob": "x" * BIG}
        out.update(self.summary(s, ts, length))
        out["events"] = s.events[:length]
        if s.pad == "unknown_after":
            out["trace"] = {"events": DECOY, "blob": "y" * BIG}
        s.note(ts, length)
        return json.dumps(out).encode()

    # -- the handler --------------------------------------------------------------------------------------

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/api/v1/chat":
            self.requests["list"] += 1
            return self._list(request.url.params)
        match = re.fullmatch(r"/api/v1/chat/([^/]+)(/summary)?", path)
        if match is None:
            return httpx.Response(404, json={"detail": "Not Found"})
        sid = unquote(match[1])
        s = self.sessions.get(sid)
        if s is None or s.deleted:
            return httpx.Response(404, json={"detail": "chat session not found"})
        if match[2]:
            self.requests["summary"] += 1
            s.note(s.ts, len(s.events))
            return _json(json.dumps(self.summary(s, s.ts, len(s.events))).encode())
        self.requests["retrieve"] += 1
        queued = self.answers.get(sid)
        fault = queued.pop(0) if queued else None
        if fault == 503:
            return httpx.Response(503, json={"detail": "unavailable"})
        ts, length = s.ts, len(s.events)
        if isinstance(fault, tuple) and fault[0] == "cut":  # a prefix under the current timestamp
            length = min(fault[1], length)
        elif isinstance(fault, tuple) and fault[0] == "lag":  # an older version, whole, with its timestamp
            ts, length = s.versions[fault[1] % len(s.versions)]
        self.served.append((sid, s.epoch, length))
        return _json(self.body(s, ts, length))

    def _order(self) -> list[str]:
        live = [s for s in self.sessions.values() if not s.deleted]
        if self.order == "newest":
            live.sort(key=lambda s: -s.true_time)
        elif self.order == "shuffled":  # an unstable order: shuffled again for every page
            self.rng.shuffle(live)
        return [s.sid for s in live]

    def _token(self, offset: int) -> str:
        self.salt += 1
        return f"{self.token_epoch}.{offset}.{self.salt}"

    def _list(self, params) -> httpx.Response:
        size = int(params.get("page_size", "100"))
        token = params.get("page_token")
        if token is None:
            self.passes.append(PassLog())
            if self.fail_first:
                self.fail_first -= 1
                return httpx.Response(503, json={"detail": "unavailable"})
            if self.empty_once:  # a failover, a misrouted project: one empty answer
                self.empty_once = False
                self.passes[-1].ended = True
                return _json(b'{"items": [], "next_page_token": null}')
            offset = 0
        else:
            if self.deploy:
                self.deploy = False
                self.token_epoch += 1
                return httpx.Response(503, json={"detail": "deploying"})
            parts = token.split(".")
            if len(parts) != 3 or not all(p.isdigit() for p in parts) or int(parts[0]) != self.token_epoch:
                return httpx.Response(400, json={"detail": "invalid page token"})  # issued, but forgotten
            if self.fail_pages:
                self.fail_pages -= 1
                return httpx.Response(503, json={"detail": "unavailable"})
            offset = int(parts[1])
        pass_log = self.passes[-1] if self.passes else PassLog()
        ids = self._order()
        if token is not None and self.empty_page_once:  # an empty page that still goes on
            self.empty_page_once = False
            return self._page(pass_log, [], self._token(offset))
        n = max(1, size - 1) if self.short_pages else size
        items = ids[offset : offset + n]
        step = max(1, len(items) - 1) if self.duplicates else len(items)
        following = self._token(offset + step) if items and offset + step < len(ids) else None
        if following is not None and self.truncate_once:  # ends early: only a prefix of the listing
            self.truncate_once = False
            following = None
        if token is not None and self.loop_once:  # loops back to a token it sent before
            self.loop_once = False
            following = token
        return self._page(pass_log, items, following, looped=following == token)

    def _page(self, pass_log: PassLog, ids: list[str], following: str | None, looped: bool = False) -> httpx.Response:
        items = []
        for sid in ids:
            s = self.sessions[sid]
            s.note(s.ts, len(s.events))
            items.append(self.summary(s, s.ts, len(s.events)))
            pass_log.listed.add(sid)
        if following is None or looped:
            pass_log.ended = True
        return _json(json.dumps({"items": items, "next_page_token": following}).encode())


def _json(body: bytes) -> httpx.Response:
    return httpx.Response(200, content=body, headers={"content-type": "application/json"})


# -- reading the exposition ---------------------------------------------------------------------------------

HISTOGRAMS = {family.name: family.bucket for family in FAMILY_TABLE}


def as_record(run: Run) -> RunRecord:
    """The model's run as the collector must derive it: what each histogram family observes of it."""
    tools = tuple(ToolCall(name, ok) for name, ok in run.tools)
    return RunRecord(run.failed, None, run.duration, run.tokens_in, run.tokens_out, run.turns, tools, ())


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
ESCAPED = re.compile(r"\\(.)")


def parse(text: str) -> Samples:
    """The samples of a text exposition: prometheus_client's own parser took half of the model's time."""
    out: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match is not None, f"not a sample line: {line[:200]!r}"
        name, labels, value = match.groups()
        pairs = LABEL.findall(labels or "")
        out[(name, frozenset((k, ESCAPED.sub(lambda m: "\n" if m[1] == "n" else m[1], v)) for k, v in pairs))] = float(value)
    return out


def measures(samples: Samples) -> dict[tuple, float]:
    """The totals the model checks, from the rendered chat families."""
    # a Counter for its 0 at a missing key, holding float totals (typeshed types a Counter's counts as int)
    out: dict[tuple, float] = Counter()  # type: ignore[assignment]
    for (name, pairs), value in samples.items():
        labels = dict(pairs)
        if name == "llamacloud_chat_runs_total":
            out[("runs", labels["outcome"])] += value
        elif name == "llamacloud_chat_run_errors_total":
            out[("errors",)] += value
        elif name == "llamacloud_chat_tokens_total":
            out[("tokens", labels["token_type"])] += value
        elif name == "llamacloud_chat_events_total":
            out[("events", labels["event_type"])] += value
        elif name == "llamacloud_chat_tool_calls_total":
            out[("tools", labels["outcome"])] += value
        else:
            for family, short in HISTOGRAMS.items():
                for suffix in ("_count", "_sum"):
                    if name == family + suffix:
                        out[(suffix[1:], short, labels.get("token_type"))] += value
    return out


def truth(runs: list[Run], events: Counter, huge: bool) -> dict[tuple, float]:
    # a Counter for its == (a missing key is 0), holding float totals (typeshed types a Counter's counts as int)
    out: dict[tuple, float] = Counter()  # type: ignore[assignment]
    for kind in ("success", "error"):
        out[("runs", kind)] = sum(r.failed == (kind == "error") for r in runs)
    out[("errors",)] = out[("runs", "error")]
    for kind in ("result", "no_result"):
        out[("tools", kind)] = sum(ok == (kind == "result") for r in runs for _, ok in r.tools)
    for kind, n in events.items():
        out[("events", kind)] = n
    observed: dict[tuple[str, str | None], list[float]] = {}
    records = [as_record(r) for r in runs]
    for family in FAMILY_TABLE:
        if huge and family.bucket == "tokens":  # a sum past 2^53 saturates or makes the field unknown (DESIGN §4)
            continue
        for key in family.series_keys():
            observed[(family.bucket, key)] = [v for rec in records for k, v in family.observe(rec) if k == key]
    if not huge:
        for kind in ("input", "output"):
            out[("tokens", kind)] = sum(observed[("tokens", kind)])
    for (short, series), values in observed.items():
        out[("count", short, series)] = len(values)
        out[("sum", short, series)] = sum(values)
    return out


def histogram_shape(samples: Samples) -> list[str]:
    """Every chat histogram as Prometheus requires it: buckets cumulative, ``+Inf`` equal to ``_count``."""
    problems = []
    series: dict[tuple, list[tuple[float, float]]] = {}
    for (name, labels), value in samples.items():
        if name.startswith("llamacloud_chat_") and name.endswith("_bucket"):
            rest = frozenset(kv for kv in labels if kv[0] != "le")
            series.setdefault((name.removesuffix("_bucket"), rest), []).append((float(dict(labels)["le"]), value))
    for (name, rest), buckets in series.items():
        counts = [value for _, value in sorted(buckets)]
        if counts != sorted(counts):
            problems.append(f"{name}{dict(rest)}: buckets not cumulative {sorted(buckets)}")
        if counts and counts[-1] != samples.get((name + "_count", rest)):
            problems.append(f"{name}{dict(rest)}: +Inf {counts[-1]} is not _count {samples.get((name + '_count', rest))}")
    return problems


def buckets_of(values: list[float], bounds: Sequence[float]) -> list[int]:
    return [sum(v <= b for v in values) for b in bounds]


def close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


# -- the machine --------------------------------------------------------------------------------------------


@dataclass
class Completed:
    listed: set[str] | None
    watched: int
    generation: int


def guarded(method):
    """A rule or invariant that marks the machine broken when it fails: the teardown then only cleans up, and
    the first failure is the one reported."""

    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            self.broken = True
            raise

    return wrapped


class LoopModel(RuleBasedStateMachine):
    """The upstream (``FakeChatApi``), the collector on it (client, store, poller: restarted as a new process
    would be), and what the model knows the collector may and must count."""

    def __init__(self) -> None:
        super().__init__()
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
        shm = Path("/dev/shm")  # the real store, without an fsync per cycle where the machine has a tmpfs
        self.dir = Path(tempfile.mkdtemp(prefix="loop-model-", dir=shm if shm.is_dir() else None))
        self.loop = asyncio.new_event_loop()
        self.api = FakeChatApi(0)
        self.runs: dict[int, Run] = {}
        self.next_rid = 1
        self.true_time = 0
        self.clock_ahead = False
        self.page_size = 2
        self.buckets, self.rules, self.label_limit = 0, 0, 0
        self.rebucketed = False
        self.huge = False
        self.generation = 0
        self.completed: list[Completed] = []
        self.consumed = 0
        self.last: dict[tuple, float] = {}
        self.samples: Samples | None = None
        self.broken = False
        self.poller: Poller | None = None
        self.client: LlamaCloudClient | None = None
        self.registry = CollectorRegistry()

    # -- wiring ---------------------------------------------------------------------------------------

    def _settings(self) -> Settings:
        return Settings(
            base_url="https://api.test",
            page_size=self.page_size,
            interval=60.0,
            label_value_limit=LABEL_LIMITS[self.label_limit],
            error_rules=[{"type": t, "pattern": p} for t, p in RULE_SETS[self.rules]],
            buckets=BUCKET_SETS[self.buckets],
        )

    def _start(self) -> None:
        settings_ = self._settings()
        rules = [(r.type, r.pattern) for r in settings_.error_rules]
        metrics = SelfMetrics(CollectorRegistry())

        async def no_sleep(_seconds: float) -> None:
            return None

        async def build() -> LlamaCloudClient:
            return build_client(
                settings_,
                "llx-model",
                metrics,
                httpx.MockTransport(self.api),
                retry=RetryPolicy(max_attempts=1),
                sleep=no_sleep,
                rng=lambda: 0.0,
                clock=lambda: MONO,
                wall_clock=lambda: WALL,
            )

        self.client = self.loop.run_until_complete(build())
        store = SqliteStore(
            self.dir / "state.db", settings_.buckets.as_buckets(), rules, settings_.label_value_limit, clock=lambda: WALL
        )
        self.poller = Poller(
            self.client,
            store,
            wire(settings_).poll,
            ErrorClassifier(rules),
            metrics,
            clock=lambda: WALL,
            monotonic=lambda: MONO,
        )
        registry = CollectorRegistry()
        registry.register(
            SnapshotCollector(lambda: one_project(self._running().snapshot), **arguments(wire(settings_).exposition))
        )
        self.registry = registry
        self.samples = None

    def _stop(self) -> None:
        if self.poller is not None:
            assert self.client is not None  # started with the poller
            self.poller.store.close()
            self.loop.run_until_complete(self.client.aclose())
            self.poller = None

    def _render(self) -> Samples:
        if self.samples is None:
            self.samples = parse(generate_latest(self.registry).decode())
        return self.samples

    def _running(self) -> Poller:
        assert self.poller is not None, "the collector is not running"
        return self.poller

    def _ready(self) -> bool:
        return bool(self._running().snapshot.ready)

    def _shown(self) -> set[str] | None:
        if not self._ready():
            return None
        return {dict(labels)["session_id"] for (name, labels) in self._render() if name == "llamacloud_chat_session_info"}

    def _live(self) -> set[str]:
        return {sid for sid, s in self.api.sessions.items() if not s.deleted}

    # -- the upstream's moves -------------------------------------------------------------------------

    def _stamp(self) -> tuple[str, int]:
        self.true_time += 1
        shown = EPOCH + timedelta(seconds=self.true_time + (AHEAD if self.clock_ahead else 0))
        return shown.isoformat(), self.true_time

    def _publish(self, s: Sess, ts_mode: str = "bump") -> None:
        """A new version of ``s``: a new timestamp (or the same, or Go's zero time)."""
        if ts_mode == "bump":
            s.ts, s.true_time = self._stamp()
        elif ts_mode == "zero":
            s.ts, s.true_time = ZERO_TIME, self._stamp()[1]
        s.versions.append((s.ts, len(s.events)))
        s.note(s.ts, len(s.events))

    def _run(self, s: Sess, spec, *, unique: bool = False, tokens: int | None = None, text: int = 0) -> None:
        failed, error_index, tools, duration, token_kind, extra = spec
        if unique:
            duration = "ok"  # a unique stop, so a re-created history never looks like the old one
        rid = self.next_rid
        self.next_rid += 1
        events: list[dict] = [] if s.open else [{"type": "user_input", "content": f"question {rid}"}]
        if extra == "thinking":
            events.append({"type": "thinking_delta", "content": "hmm"})
        calls = []
        for k, (tool, answered) in enumerate(tools):
            name, call_id = TOOLS[tool], f"c{rid}-{k}"
            events.append({"type": "tool_call", "name": name, "call_id": call_id, "arguments": {"q": "x"}})
            if answered:
                events.append({"type": "tool_result", "name": name, "call_id": call_id, "result": "r"})
            calls.append((name, answered))
        if extra == "text" or text:
            events.append({"type": "text", "content": "z" * text if text else "an answer"})
        if extra == "unknown":
            events.append({"type": "citation_added", "url": "https://example.com"})
        usage: dict = {"turns": 1 + rid % 3}
        seconds = None
        if duration == "ok":
            usage["duration_ms"] = 50 + 37 * rid
            seconds = usage["duration_ms"] / 1000
        elif duration == "negative":  # refused at the boundary: the run's duration is unknown
            usage["duration_ms"] = -5
        tin = tout = None
        if tokens is not None:
            tin, tout = tokens, 1
        elif token_kind == "ok":
            tin, tout = 3 + rid % 7, 11 + rid % 5
        if tin is not None:
            usage["total_input_tokens"], usage["total_output_tokens"] = tin, tout
        error = ERRORS[error_index] if failed else None
        events.append({"type": "stop", "is_error": failed, "error": error, "usage": usage})
        s.events += events
        s.rids += [None] * (len(events) - 1) + [rid]
        s.open = False
        self.runs[rid] = Run(rid, failed, seconds, tin, tout, usage["turns"], tuple(calls))
        if tin is not None and tin > 2**40:
            self.huge = True

    def _open(self, s: Sess) -> None:
        if not s.open:
            s.events.append({"type": "user_input", "content": "still thinking"})
            s.rids.append(None)
            s.open = True

    def _pick(self, pick: int, candidates) -> Sess | None:
        chosen = sorted(candidates)
        return self.api.sessions[chosen[pick % len(chosen)]] if chosen else None

    # -- cycles ---------------------------------------------------------------------------------------

    def _cycle(self):
        before = self._shown()
        watched_before = len(before) if before is not None else 0
        self.api.served.clear()
        report = self.loop.run_until_complete(self._running().cycle())
        self.samples = None
        if report.result != "failure":  # committed: what it read is the collector's now
            for sid, epoch, length in self.api.served:
                s = self.api.sessions[sid]
                if s.epoch == epoch:
                    s.observed = max(s.observed, length)
            for sid, epoch in {(sid, epoch) for sid, epoch, _ in self.api.served}:
                if self.api.sessions[sid].epoch == epoch:
                    self.api.sessions[sid].reads += 1
        if report.pass_complete:
            ended = [i for i in range(self.consumed, len(self.api.passes)) if self.api.passes[i].ended]
            listed = self.api.passes[ended[-1]].listed if ended else None
            self.consumed = ended[-1] + 1 if ended else len(self.api.passes)
            self.completed.append(Completed(listed, watched_before, self.generation))
        after = self._shown()
        if before is not None and after is not None:
            for sid in sorted(before - after):
                if not self.api.sessions[sid].deleted:
                    self._check_retired(sid, report.pass_complete)
        return report

    def _check_retired(self, sid: str, pass_complete: bool) -> None:
        """A session still upstream lost its series: only two consecutive complete passes missing it may
        do that, and never a single short pass (DESIGN §4 "One listing is never trusted alone")."""
        assert pass_complete, f"{sid} (still upstream) retired by a cycle that completed no pass"
        current = self.completed[-1]
        if current.listed is None:
            return
        assert sid not in current.listed, f"{sid} retired by the pass that listed it"
        previous = self.completed[-2] if len(self.completed) > 1 else None
        if previous is None or previous.generation != current.generation or previous.listed is None:
            return  # the pass before it ran in another process: what it persisted is the lead's choice
        assert sid not in previous.listed, (
            f"{sid} (still upstream) retired after one complete pass missed it; the pass before listed it"
        )
        if 2 * len(current.listed) < current.watched:
            short = 0
            for done in reversed(self.completed[:-1]):
                if done.generation != current.generation or done.listed is None:
                    return  # a run of short passes from another process, or a pass not known: not judged
                if 2 * len(done.listed) > done.watched:
                    break
                short += 1
            assert short >= 2, (
                f"{sid} retired by a short pass ({len(current.listed)} of {current.watched} "
                f"listed) that only {short} earlier short passes agreed with"
            )

    # -- truth and checks -----------------------------------------------------------------------------

    def _truth(self) -> tuple[dict, dict, list[Run]]:
        must: set[int] = set()
        may: set[int] = set()
        must_events: Counter[str] = Counter()
        may_events: Counter[str] = Counter()
        for s in self.api.sessions.values():
            runs_min, runs_max, events_min, events_max = s.owed()
            must |= runs_min
            may |= runs_max
            must_events += events_min
            may_events += events_max
        owed = [self.runs[r] for r in sorted(must)]
        return truth(owed, must_events, self.huge), truth([self.runs[r] for r in may], may_events, self.huge), owed

    def _problems(self, exact: bool) -> list[str]:
        if not self._ready():
            return ["not ready"] if exact else []
        samples = self._render()
        got = measures(samples)
        low, high, owed = self._truth()
        problems = []
        for key in sorted(set(high) | set(got), key=repr):
            if self.huge and (key[0] == "tokens" or key[1:2] == ("tokens",)):
                continue
            value = got.get(key, 0.0)
            if value > high.get(key, 0.0) and not close(value, high.get(key, 0.0)):
                problems.append(f"{key} = {value}: more than was ever readable ({high.get(key, 0.0)})")
            elif exact and value < low.get(key, 0.0) and not close(value, low.get(key, 0.0)):
                problems.append(f"{key} = {value}: less than owed ({low.get(key, 0.0)})")
        problems += histogram_shape(samples)
        if not close(got.get(("errors",), 0.0), got.get(("runs", "error"), 0.0)):
            problems.append(
                f"errors by type add up to {got.get(('errors',), 0.0)}, not the {got.get(('runs', 'error'), 0.0)} failed runs"
            )
        if exact:
            problems += self._exact_extras(samples, low, high, owed)
        return problems

    def _exact_extras(self, samples: Samples, low: dict, high: dict, owed: list[Run]) -> list[str]:
        problems = []
        shown, live = self._shown(), self._live()
        if shown != live:
            problems.append(f"watched {sorted(shown or ())}, upstream {sorted(live)}")
        failing = samples.get(("llamacloud_collector_sessions_failing", frozenset()), 0.0)
        if failing:
            problems.append(f"{failing} sessions failing")
        open_runs = sum(1 for sid in live if self.api.sessions[sid].open)
        in_progress = samples.get(("llamacloud_chat_runs_in_progress", frozenset()))
        if in_progress != open_runs:
            problems.append(f"runs_in_progress = {in_progress}, but {open_runs} sessions end in an unfinished run")
        if low == high and not self.rebucketed:  # the finite buckets too, when nothing is uncertain
            bounds = BUCKET_SETS[self.buckets]
            records = [as_record(r) for r in owed]
            values = {
                family.name: ([v for rec in records for _, v in family.observe(rec)], bounds.get(family.bucket, family.buckets))
                for family in FAMILY_TABLE
                if not family.series
            }
            for name, (observed, edges) in values.items():
                for bound, want in zip(edges, buckets_of(observed, edges), strict=True):
                    le = floatToGoString(bound)  # as the exposition writes it: 1.048576e+06, not 1048576.0
                    got = samples.get((name + "_bucket", frozenset({"le": le}.items())))
                    if got != want:
                        problems.append(f"{name}_bucket{{le={le}}} = {got}, not {want}")
        return problems

    def _monotonic(self) -> list[str]:
        if not self._ready():
            return []
        problems = []
        now: dict[tuple, float] = {}
        for (name, labels), value in self._render().items():
            if name.startswith("llamacloud_chat_session_") or not name.startswith(
                ("llamacloud_chat_", "llamacloud_collector_history", "llamacloud_collector_invalid")
            ):
                continue
            if name.endswith(("_total", "_count", "_sum")) or name.endswith("_bucket"):
                now[(name, labels)] = value
        for key, value in now.items():
            before = self.last.get(key)
            if before is not None and value < before and not close(value, before):
                problems.append(f"{key[0]}{dict(key[1])} went backwards: {before} -> {value}")
        self.last.update(now)
        return problems

    def _heal(self, why: str) -> None:
        """No faults, a stable listing, every change with a timestamp of its own; then exact, in bounds."""
        self.api.heal()
        for s in self.api.sessions.values():
            if s.deleted:
                continue
            grown = False
            while len(s.events) < s.gate:  # the re-created history grows past what was counted before
                self._run(s, (False, 0, [], "ok", "ok", "none"))
                grown = True
            if grown or s.ambiguous():
                self._publish(s)
        passes = 0
        problems: list[str] = ["no cycle"]
        for _ in range(HEAL_CYCLES):
            report = self._cycle()
            passes += report.pass_complete
            problems = self._problems(exact=True)
            if passes and not problems:
                break
        assert not problems, f"not exact {HEAL_CYCLES} cycles after the upstream healed ({why}): {problems}"
        for _ in range(2):  # and it stays so
            self._cycle()
            problems = self._problems(exact=True)
            assert not problems, f"exact once healed ({why}), then not: {problems}"

    # -- rules: the upstream ----------------------------------------------------------------------------

    @initialize(n=st.integers(1, 4), page_size=st.integers(1, 3), seed=st.integers(0, 2**16))
    @guarded
    def init(self, n, page_size, seed):
        self.page_size = page_size
        self.api.rng.seed(seed)
        for i in range(n):
            self.create(i, [(False, 0, [], "ok", "ok", "none")], False, i % 3)
        self._start()

    @rule(
        which=st.integers(0, len(IDS) - 1),
        specs=st.lists(RUN_SPEC, max_size=3),
        open_run=st.booleans(),
        indexes=st.integers(0, 2),
    )
    @guarded
    def create(self, which, specs, open_run, indexes):
        sid = IDS[which]
        if sid in self.api.sessions:
            return
        s = Sess(sid, (INDEXES[:indexes]))
        self.api.sessions[sid] = s
        for spec in specs:
            self._run(s, spec)
        if open_run:
            self._open(s)
        self._publish(s)

    @rule(
        pick=st.integers(0, 1000),
        specs=st.lists(RUN_SPEC, min_size=1, max_size=3),
        open_run=st.booleans(),
        ts_mode=st.sampled_from(["bump", "bump", "same", "zero"]),
    )
    @guarded
    def append(self, pick, specs, open_run, ts_mode):
        """Runs finish; the timestamp moves on (or stays while the events change, or is Go's zero time)."""
        s = self._pick(pick, self._live())
        if s is None:
            return
        for spec in specs:
            self._run(s, spec)
        if open_run:
            self._open(s)
        self._publish(s, ts_mode)

    @rule(pick=st.integers(0, 1000))
    @guarded
    def delete(self, pick):
        s = self._pick(pick, self._live())
        if s is not None:
            s.deleted = True

    @rule(pick=st.integers(0, 1000), specs=st.lists(RUN_SPEC, max_size=2))
    @guarded
    def back(self, pick, specs):
        """A deleted session comes back with its history (a listing that skipped it, a restore)."""
        s = self._pick(pick, [sid for sid, s in self.api.sessions.items() if s.deleted])
        if s is None:
            return
        s.deleted = False
        for spec in specs:
            self._run(s, spec)
        self._publish(s)

    def _new_epoch(self, s: Sess) -> None:
        """After a heal, everything of the epoch counted: bank it and start another."""
        runs_min, runs_max, events_min, events_max = s.owed()
        s.banked_min, s.banked_max = runs_min, runs_max
        s.banked_events_min, s.banked_events_max = events_min, events_max
        s.epoch += 1
        s.versions, s.observed, s.reads = [], 0, 0

    def _read_reset(self, s: Sess) -> None:
        """The collector reads the changed history as it is (its reset), before anything else changes: read,
        then not fetched again (an older answer over a shorter history is ignored once, then taken)."""
        self.api.heal()
        for _ in range(HEAL_CYCLES):
            reads = s.reads
            self._cycle()
            if reads and s.reads == reads:
                return
        raise AssertionError(
            f"{s.sid}: its new history not read, or fetched every cycle and never taken, in "
            f"{HEAL_CYCLES} cycles of a healed upstream"
        )

    @rule(
        kind=st.sampled_from(["recreate", "recreate_noticed", "rewrite", "heal"]),
        pick=st.integers(0, 1000),
        keep=st.integers(0, 6),
        specs=st.lists(RUN_SPEC, max_size=3),
        open_run=st.booleans(),
    )
    @guarded
    def quiet(self, kind, pick, keep, specs, open_run):
        """A change whose truth depends on when the collector reads it, made when it has read everything:
        a session re-created (or its stop rewritten), then read once as it is. Or only a heal."""
        if kind == "heal":
            self._heal("the heal rule")
        elif kind == "rewrite":
            self._rewrite_last_stop(pick)
        else:
            self._recreate(pick, kind == "recreate_noticed", keep, specs, open_run)

    def _recreate(self, pick, notice, keep, specs, open_run):
        """The session is deleted (the collector notices, or not) and created again with the same ID: another
        history (a prefix of the old one kept: a history shrunk for good)."""
        s = self._pick(pick, self._live())
        if s is None:
            return
        self._heal("before a re-creation")
        if notice:
            s.deleted = True
            self._heal("a deletion before a re-creation")
            s.deleted = False
        old_length = len(s.events)
        counted = max([0] + [i + 1 for i, r in enumerate(s.rids) if r is not None])
        cut = max([0] + [i + 1 for i, r in enumerate(s.rids[:keep]) if r is not None])  # whole runs only
        if cut == counted:  # every counted event kept: the new history only grew, as after any append
            for spec in specs:
                self._run(s, spec)
            self._publish(s)
            self._heal("after a re-creation that kept the whole history")
            return
        self._new_epoch(s)
        s.events, s.rids, s.open = s.events[:cut], s.rids[:cut], False
        for spec in specs:
            self._run(s, spec, unique=True)
        if open_run:
            self._open(s)
        # what the collector reads next is a reset: all of it taken as counted, the rest owed once it is as
        # long as what was counted before (before that, a short history is no different from a short read)
        s.base_stop = next((i + 1 for i in range(len(s.events) - 1, -1, -1) if s.events[i]["type"] == "stop"), 0)
        s.base_events, s.gate = len(s.events), old_length
        self._publish(s)
        self._read_reset(s)
        self._heal("after a re-creation")

    def _rewrite_last_stop(self, pick):
        """A counted stop changes upstream (its skipped indexes): nothing is counted again."""
        s = self._pick(pick, [sid for sid in self._live() if any(r is not None for r in self.api.sessions[sid].rids)])
        if s is None:
            return
        self._heal("before a rewrite")
        self._new_epoch(s)
        last = max(i for i, r in enumerate(s.rids) if r is not None)
        stop = dict(s.events[last])
        stop["skipped_index_ids"] = [] if stop.get("skipped_index_ids") else ["idx-gone"]
        s.events[last] = stop
        s.base_stop, s.base_events, s.gate = last + 1, len(s.events), len(s.events)
        self._publish(s)
        self._read_reset(s)
        self._heal("after a rewrite")

    @rule(ahead=st.booleans())
    @guarded
    def upstream_clock(self, ahead):
        """The upstream clock runs an hour fast, or is corrected: timestamps go backwards."""
        self.clock_ahead = ahead

    @rule(
        pick=st.integers(0, 1000),
        kind=st.sampled_from(["zero_time", "long_title", "huge_tokens", "unknown_before", "unknown_after", "long_text"]),
    )
    @guarded
    def extreme(self, pick, kind):
        s = self._pick(pick, self._live())
        if s is None:
            return
        if kind == "zero_time":
            self._publish(s, "zero")
            return
        if kind == "long_title":
            s.title = "t" * 70_000
        elif kind == "huge_tokens":
            self._run(s, (False, 0, [], "ok", "ok", "none"), tokens=2**53)
        elif kind == "long_text":
            self._run(s, (False, 0, [], "ok", "ok", "none"), text=BIG)
        else:
            s.pad = kind
        self._publish(s)

    # -- rules: the listing and the reads -----------------------------------------------------------------

    @rule(
        kind=st.sampled_from(["empty", "truncated", "loop", "empty_page", "fail_pages", "fail_first", "refuse_tokens"]),
        times=st.integers(1, 4),
        then=st.integers(0, 3),
    )
    @guarded
    def listing_fault(self, kind, times, then):
        api = self.api
        if kind == "empty":
            api.empty_once = True
        elif kind == "truncated":
            api.truncate_once = True
        elif kind == "loop":
            api.loop_once = True
        elif kind == "empty_page":
            api.empty_page_once = True
        elif kind == "fail_pages":
            api.fail_pages = times
        elif kind == "fail_first":
            api.fail_first = times
        else:  # a deploy mid-pass forgets every cursor it issued: the pass's next token is refused (HTTP 400)
            api.deploy = True
        self._cycles(then)

    @rule(
        order=st.sampled_from(["oldest", "newest", "shuffled"]),
        short=st.booleans(),
        duplicates=st.booleans(),
        then=st.integers(0, 3),
    )
    @guarded
    def listing_shape(self, order, short, duplicates, then):
        self.api.order, self.api.short_pages, self.api.duplicates = order, short, duplicates
        self._cycles(then)

    @rule(
        pick=st.integers(0, 1000),
        kind=st.sampled_from(["503", "cut", "lag"]),
        times=st.integers(1, 3),
        where=st.integers(0, 1000),
        then=st.integers(0, 3),
    )
    @guarded
    def read_fault(self, pick, kind, times, where, then):
        """The next reads of a session fail, are cut short (under the current timestamp), or come from a
        lagging replica (an older version with its own timestamp)."""
        s = self._pick(pick, self._live())
        if s is None:
            return
        if kind == "503":
            fault: list[int | tuple[str, int]] = [503] * times
        elif kind == "cut":
            fault = [("cut", where % (len(s.events) + 1))] * times
        else:
            fault = [("lag", where)] * times if s.versions else []
        self.api.answers[s.sid] = fault
        self._cycles(then)

    # -- rules: the collector and its operator ----------------------------------------------------------

    def _cycles(self, n: int) -> None:
        for _ in range(n):
            self._cycle()

    @rule(n=st.integers(1, 4))
    @guarded
    def cycles(self, n):
        self._cycles(n)

    @rule(change=st.sampled_from(["none", "none", "buckets", "rules", "label_limit"]), which=st.integers(1, 2))
    @guarded
    def restart(self, change, which):
        """A new process on the same state file, maybe with another configuration."""
        self._stop()
        if change == "buckets":
            self.buckets = (self.buckets + which) % len(BUCKET_SETS)
            self.rebucketed = True
            self.last = {k: v for k, v in self.last.items() if not k[0].endswith("_bucket") or dict(k[1]).get("le") == "+Inf"}
        elif change == "rules":
            self.rules = (self.rules + which) % len(RULE_SETS)
        elif change == "label_limit":
            self.label_limit = (self.label_limit + which) % len(LABEL_LIMITS)
        self.generation += 1
        self._start()
        aside = sorted(p.name for p in self.dir.iterdir() if ".corrupt-" in p.name)
        assert not aside, f"a restart refused the state file its own release wrote: {aside}"

    # -- after every step -------------------------------------------------------------------------------

    @invariant()
    @guarded
    def never_backwards_never_twice(self):
        if self.poller is None:
            return
        problems = self._monotonic() + self._problems(exact=False)
        assert not problems, problems

    def teardown(self):
        try:
            if self.poller is not None and not self.broken:
                self._heal("the end of the example")
        finally:
            try:
                self._stop()
                self.loop.run_until_complete(self.loop.shutdown_default_executor())
            finally:  # thousands of examples in the long profile: none may leave its directory behind
                self.loop.close()
                shutil.rmtree(self.dir, ignore_errors=True)
                structlog.reset_defaults()


LoopModel.TestCase.settings = PROFILE
test_loop_model = LoopModel.TestCase


def test_each_example_removes_its_state_directory():
    machine = LoopModel()
    machine.init(n=1, page_size=1, seed=0)
    machine.teardown()
    assert not machine.dir.exists()


# -- what the machine found, as plain tests ------------------------------------------------------------------
# Each is a sequence hypothesis found (shrunk, or cut by hand to the same failure), replayed on the same
# machinery with every step's checks; the teardown is the final heal. The first ones failed on 9e14d04, the
# tree issue 26 was filed on; each names the DESIGN §4 rule it broke.

OK_RUN: RunSpec = (False, 0, [], "ok", "ok", "none")


def replay(*steps: tuple[str, dict]) -> None:
    machine = LoopModel()
    try:
        for name, arguments in steps:
            getattr(machine, name)(**arguments)
            machine.never_backwards_never_twice()
    finally:
        machine.teardown()


def test_finding_one_empty_listing_retires_no_session():
    """ "One listing is never trusted alone": one answer of ``{"items": [], "next_page_token": null}`` retired
    every session at once (issue 26, item 1)."""
    replay(
        ("init", {"n": 1, "page_size": 1, "seed": 0}),
        ("cycles", {"n": 1}),
        ("listing_fault", {"kind": "empty", "times": 1, "then": 0}),
        ("cycles", {"n": 1}),
    )


def test_finding_a_refused_resumed_token_does_not_wedge_the_listing():
    """ "A pass that cannot go on (its resumed page token refused with a 4xx) starts over from page 1": a deploy
    mid-pass forgot the token, and every cycle after asked for it again (issue 26, item 2)."""
    replay(
        ("init", {"n": 3, "page_size": 1, "seed": 0}),
        ("cycles", {"n": 1}),
        ("listing_fault", {"kind": "refuse_tokens", "times": 1, "then": 2}),
        ("append", {"pick": 2, "specs": [OK_RUN], "open_run": False, "ts_mode": "bump"}),
    )


def test_finding_go_s_zero_time_hides_no_run():
    """ "last_updated_at is a hint ... compared for equality, not order": a session whose timestamp became
    ``0001-01-01T00:00:00Z`` had every new run ignored as a stale read (issue 26, items 3 and 4)."""
    replay(
        ("init", {"n": 1, "page_size": 1, "seed": 0}),
        ("cycles", {"n": 1}),
        ("append", {"pick": 0, "specs": [OK_RUN], "open_run": False, "ts_mode": "zero"}),
    )


def test_finding_a_corrected_upstream_clock_hides_no_run():
    """ "A timestamp that went backwards is logged once per session and counted": runs finished after an upstream
    clock an hour fast was put right were not counted (issue 26, item 3)."""
    replay(
        ("init", {"n": 1, "page_size": 1, "seed": 0}),
        ("upstream_clock", {"ahead": True}),
        ("append", {"pick": 0, "specs": [OK_RUN], "open_run": False, "ts_mode": "bump"}),
        ("cycles", {"n": 1}),
        ("upstream_clock", {"ahead": False}),
        ("append", {"pick": 0, "specs": [OK_RUN], "open_run": False, "ts_mode": "bump"}),
    )


def test_finding_new_buckets_keep_count_and_sum_of_a_deleted_session():
    """ "New bucket bounds: _count, _sum and +Inf keep the old totals as floors": re-derived from the sessions
    still listed, every histogram's _count and _sum went backwards (issue 26, item 5)."""
    replay(
        ("init", {"n": 2, "page_size": 1, "seed": 0}),
        ("cycles", {"n": 1}),
        ("delete", {"pick": 0}),
        ("cycles", {"n": 3}),
        ("restart", {"change": "buckets", "which": 1}),
        ("cycles", {"n": 1}),
    )


def test_finding_a_new_label_limit_counts_no_tool_call_twice():
    """ "New label limits apply to the runs counted from then on": re-derived under a smaller limit, a tool call
    counted under its name kept that as a floor and counted again under ``_other`` (issue 26, item 5)."""
    calls = (False, 0, [(0, True), (1, False)], "ok", "ok", "none")
    replay(
        ("init", {"n": 1, "page_size": 1, "seed": 0}),
        ("append", {"pick": 0, "specs": [calls], "open_run": False, "ts_mode": "bump"}),
        ("cycles", {"n": 1}),
        ("restart", {"change": "label_limit", "which": 1}),
        ("cycles", {"n": 1}),
    )


def test_finding_a_new_error_rule_keeps_errors_equal_to_failed_runs():
    """ "The sum of run_errors_total over error_type equals the failed runs": after a rule was added in front,
    the floor of the old type and the re-derived new one were both counted (issue 26, item 5)."""
    billing: RunSpec = (True, 3, [], "ok", "ok", "none")  # "quota exceeded: billing": rate_limit, then billing
    replay(
        ("init", {"n": 1, "page_size": 1, "seed": 0}),
        ("append", {"pick": 0, "specs": [billing], "open_run": False, "ts_mode": "bump"}),
        ("cycles", {"n": 1}),
        ("restart", {"change": "rules", "which": 1}),
        ("cycles", {"n": 1}),
    )


def test_finding_a_title_over_64_kib_survives_a_restart():
    """ "Nothing is ever saved that a load would refuse": the next start called its own file corrupt and moved it
    aside (issue 26, item 4)."""
    replay(
        ("init", {"n": 1, "page_size": 1, "seed": 0}),
        ("extreme", {"pick": 0, "kind": "long_title"}),
        ("cycles", {"n": 1}),
        ("restart", {"change": "none", "which": 1}),
    )


def test_finding_2_53_tokens_twice_survive_a_restart():
    """The same, for two runs of 2^53 tokens: a sum over 2^53 was saved and refused (issue 26, item 4)."""
    replay(
        ("init", {"n": 1, "page_size": 1, "seed": 0}),
        ("extreme", {"pick": 0, "kind": "huge_tokens"}),
        ("extreme", {"pick": 0, "kind": "huge_tokens"}),
        ("cycles", {"n": 1}),
        ("restart", {"change": "none", "which": 1}),
    )


def test_finding_go_s_zero_time_survives_a_restart():
    """The same, for a ``last_updated_at`` before 1970 (issue 26, item 4)."""
    replay(
        ("init", {"n": 1, "page_size": 1, "seed": 0}),
        ("extreme", {"pick": 0, "kind": "zero_time"}),
        ("cycles", {"n": 1}),
        ("restart", {"change": "none", "which": 1}),
    )


def test_finding_a_big_body_s_history_is_its_top_level_events():
    """ "A body's history is its top-level events key, whatever the body's size": over 1 MiB, an unknown field
    before it holding an ``events`` array was taken as the history (issue 26, item 6)."""
    replay(
        ("init", {"n": 1, "page_size": 1, "seed": 0}), ("extreme", {"pick": 0, "kind": "unknown_before"}), ("cycles", {"n": 1})
    )


def test_finding_a_busy_session_that_moves_to_page_one_mid_pass_keeps_its_series():
    """ "A session is gone only when two consecutive complete passes did not list it": listed newest first, a
    session updated while a pass was stalled on page 2 moved to page 1, was missed, and lost its series
    (issue 26, item 8)."""
    replay(
        ("init", {"n": 3, "page_size": 1, "seed": 0}),
        ("cycles", {"n": 1}),
        ("listing_shape", {"order": "newest", "short": False, "duplicates": False, "then": 0}),
        ("listing_fault", {"kind": "fail_pages", "times": 1, "then": 1}),
        ("append", {"pick": 0, "specs": [OK_RUN], "open_run": False, "ts_mode": "bump"}),
        ("cycles", {"n": 1}),
    )


def test_finding_a_lagging_answer_after_a_clock_correction_hides_no_run():
    """ "last_updated_at is a hint ... compared for equality, not order (a corrected upstream clock must not hide
    runs)": after the upstream clock was put back, the listing showed the new, earlier timestamp while a lagging
    replica answered with the old version and its later timestamp; the answer was taken as the listed version
    (only an answer *earlier* than the listing is keyed on its own time), so the session was never fetched
    again and its newer runs stayed uncounted until it changed again. Found on the tree with issue 26's fixes."""
    replay(
        ("init", {"n": 1, "page_size": 1, "seed": 0}),
        ("upstream_clock", {"ahead": True}),
        ("append", {"pick": 0, "specs": [OK_RUN], "open_run": False, "ts_mode": "bump"}),
        ("cycles", {"n": 1}),
        ("upstream_clock", {"ahead": False}),
        ("append", {"pick": 0, "specs": [OK_RUN], "open_run": False, "ts_mode": "bump"}),
        ("read_fault", {"pick": 0, "kind": "lag", "times": 1, "where": 1, "then": 1}),
    )


def test_finding_a_short_pass_after_an_accepted_mass_deletion_retires_nothing():
    """ "A session is gone only when two consecutive complete passes did not list it"; "when three consecutive
    complete passes agree, the short listing is taken as the truth": two of three sessions deleted, three short
    passes retire them, and then one empty listing retired the last session at once (the run of short passes
    was not reset when it was accepted). Found on the tree with issue 26's fixes."""
    replay(
        ("init", {"n": 3, "page_size": 3, "seed": 0}),
        ("cycles", {"n": 1}),
        ("delete", {"pick": 0}),
        ("delete", {"pick": 0}),
        ("cycles", {"n": 3}),
        ("listing_fault", {"kind": "empty", "times": 1, "then": 1}),
    )


def test_finding_a_lagging_answer_under_go_s_zero_time_hides_no_run():
    """The same, where the listing shows Go's zero time (which no longer parses as a time): a lagging answer with
    an older, valid timestamp was keyed under the zero time, and the run the zero-time version added was never
    fetched. Found on the tree with issue 26's fixes."""
    replay(
        ("init", {"n": 1, "page_size": 1, "seed": 0}),
        ("cycles", {"n": 1}),
        ("append", {"pick": 0, "specs": [OK_RUN], "open_run": False, "ts_mode": "zero"}),
        ("read_fault", {"pick": 0, "kind": "lag", "times": 1, "where": 0, "then": 1}),
    )


def test_finding_a_session_a_short_pass_listed_is_not_retired_by_the_passes_around_it():
    """ "A session is gone only when two consecutive complete passes did not list it": a pass ending at a repeated
    token missed s3, a short pass (newest first, ended early) listed it, and the next pass that missed it retired
    it, the short pass between them ignored. Found by the long profile on the tree with issue 26's fixes."""
    replay(
        ("init", {"n": 4, "page_size": 1, "seed": 0}),
        ("cycles", {"n": 1}),
        ("listing_fault", {"kind": "loop", "times": 1, "then": 1}),
        ("listing_shape", {"order": "newest", "short": False, "duplicates": False, "then": 0}),
        ("listing_fault", {"kind": "truncated", "times": 1, "then": 1}),
        ("listing_shape", {"order": "oldest", "short": False, "duplicates": False, "then": 0}),
        ("listing_fault", {"kind": "loop", "times": 1, "then": 1}),
    )


def test_finding_short_passes_that_disagree_retire_only_what_none_of_them_listed():
    """ "A session is gone only when two consecutive complete passes did not list it"; "when three consecutive
    complete passes agree, the short listing is taken as the truth": a listing shuffled at every page gave three
    short passes in a row ([s2], [s2], [s0]) and the third retired s2, which the pass before had listed (any
    three short passes counted as agreeing). Found by the long profile on the tree with issue 26's fixes."""
    replay(
        ("init", {"n": 3, "page_size": 1, "seed": 151}),
        ("cycles", {"n": 1}),
        ("listing_shape", {"order": "shuffled", "short": False, "duplicates": False, "then": 4}),
    )
