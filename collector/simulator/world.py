"""The simulated sessions, how runs are generated, and the ground truth.

Every run the world generates is also recorded as a ``RunTruth`` at the moment
it is made, independently of the collector's derivation, so tests can compare
the collector's numbers with what really happened.

A lazy world (``World(lazy=True)``, for a million sessions) keeps the sessions ``populate`` makes without their
first events: each holds a seed, and the history ``populate`` gave it is generated again from it (``lazy_history``, a
quicker generator of the same shapes) each time its ``retrieve`` body is asked for; the truth of those runs is kept as
sums (``World.lazy_truth``), not as ``RunTruth`` objects. What happens to such a session later (a run, an event, a
fault that adds one) is held as in any session: its ``events`` are what came after the generated ones, its new runs'
truths are in ``World.runs``. ``World.materialize`` makes it an ordinary session (every event held, every run's truth
in ``World.runs``; ``grow_to`` does it first): the same body, the same ``totals`` (``/_sim/totals``), exactly.
"""

from __future__ import annotations

import bisect
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from collector.llamacloud.models import KNOWN_EVENT_TYPES, UNKNOWN

TOOLS = ("search_index", "retrieve_page", "calculator", "web_lookup", "summarize", "sql_query")
ERROR_MESSAGES: dict[str, tuple[str, ...]] = {
    "timeout": ("LLM request timed out after 60s", "Deadline exceeded while waiting for the model"),
    "rate_limit": ("Rate limit reached for gpt-4o, retry later", "Provider answered 429 Too Many Requests"),
    "context_length": ("This model's maximum context length is 128000 tokens", "Context window exceeded by the retrieved nodes"),
    "auth": ("Provider rejected the API key (401 Unauthorized)",),
    "not_found": ("Index pipeline-7f3a does not exist",),
    "tool_error": ("Tool 'sql_query' raised: syntax error near SELECT",),
    "internal": ("Internal error in agent runtime", "Upstream returned 502 Bad Gateway"),
    "_OTHER": ("Run cancelled by user", "Something went wrong"),
}
QUESTIONS = (
    "What were Q3 revenues by region?",
    "Summarise the onboarding policy.",
    "Which contracts renew next month?",
    "Compare the two pricing proposals.",
    "List the open incidents for the payments service.",
)
UNKNOWN_TYPE = "citation"
INDEXES = tuple(f"idx-{i:02d}" for i in range(12))
"""The index IDs sessions are bound to (one string each, shared by every session)."""
ERROR_TYPES = tuple(ERROR_MESSAGES)
TOOL_CALL_COUNTS = (0, 0, 1, 1, 2, 3, 5)
LAZY_FROM = 200_000
"""``simulate`` makes its worlds lazy from this many sessions (unless told otherwise: ``--lazy``/``--no-lazy``)."""


@dataclass(frozen=True)
class RunTruth:
    session_id: str
    failed: bool
    error_type: str | None
    duration_ms: float | None
    input_tokens: int | None
    output_tokens: int | None
    turns: int | None
    tool_calls: tuple[tuple[str, bool], ...]
    skipped_index_ids: tuple[str, ...]
    index_ids: tuple[str, ...] = ()
    """The indexes the run's session was bound to (none: it counts under ``_none``)."""


@dataclass(slots=True)
class SimSession:
    session_id: str
    seq: int
    index_ids: list[str] | None
    shared_access: str
    title: str
    events: list[dict[str, Any]] = field(default_factory=list)
    last_updated_at: str = ""
    job_metadata: dict[str, Any] | None = None
    pending: list[dict[str, Any]] | None = None
    pending_truth: RunTruth | None = None
    touched: float = 0.0
    """World time of the last change (``last_updated_at`` as a number): the newest-first order."""
    leading: dict[str, Any] | None = None
    """Top-level fields an API may add, sent before the summary fields and ``events`` in ``retrieve``."""
    compact: bool = False
    """Sent without spaces (``bare_session``): the most events an answer holds under the size cap."""
    _detail: bytes | None = None
    lazy: tuple[int, int, float] | None = None
    """``(seed, runs, error_rate)`` of a session whose first ``runs`` runs are generated from its seed when asked
    for (``events`` holds only what came after); None once materialized, and in a world that is not lazy."""

    def summary(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "last_updated_at": self.last_updated_at,
            "generated_title": self.title,
            "index_ids": self.index_ids,
            "shared_access": self.shared_access,
            "job_metadata": self.job_metadata,
        }

    def history(self) -> list[dict[str, Any]]:
        """The session's events: ``events``, after those generated from its seed when lazy."""
        return self.events if self.lazy is None else lazy_history(self)[0] + self.events

    def detail_bytes(self) -> bytes:
        if self._detail is not None:
            return self._detail
        detail = json.dumps(
            {**(self.leading or {}), **self.summary(), "events": self.history()}, separators=(",", ":") if self.compact else None
        ).encode()
        if self.lazy is None:  # a lazy body is made again each time: a million of them would not fit
            self._detail = detail
        return detail


def fast_uuid(rng: random.Random) -> str:
    """A version-4 UUID from ``rng``: what ``str(uuid.UUID(int=rng.getrandbits(128), version=4))`` gives, quicker."""
    bits = rng.getrandbits(128) & ~(0xC000 << 48) | (0x8000 << 48)
    h = "%032x" % (bits & ~(0xF000 << 64) | (0x4000 << 64))
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def stop_truth(session: SimSession, stop: dict[str, Any], error_type: str | None, calls: list[tuple[str, bool]]) -> RunTruth:
    """The truth of a run, from its ``stop`` event as made (both generators, the lazy one and the world's)."""
    usage = stop["usage"]
    return RunTruth(
        session.session_id,
        stop["is_error"],
        error_type,
        usage.get("duration_ms"),
        usage["total_input_tokens"],
        usage["total_output_tokens"],
        usage["turns"],
        tuple(calls),
        tuple(stop["skipped_index_ids"] or ()),
        tuple(session.index_ids or ()),
    )


def lazy_run(rng: random.Random, session: SimSession, error_rate: float) -> tuple[list[dict[str, Any]], RunTruth]:
    """A whole run of a lazy session, drawn from ``rng``: the events and the shapes of ``World._make_run``, drawn
    with quicker calls (a million sessions of five runs are made in minutes)."""
    r = rng.random
    events: list[dict[str, Any]] = [{"type": "user_input", "content": QUESTIONS[int(r() * len(QUESTIONS))]}]
    if r() < 0.6:
        events += [{"type": "thinking_delta", "content": "Let me look"} for _ in range(1 + int(r() * 3))]
        events.append({"type": "thinking", "content": "Let me look at the indexes for this."})
    calls = []
    for _ in range(TOOL_CALL_COUNTS[int(r() * len(TOOL_CALL_COUNTS))]):
        name, call_id = TOOLS[int(r() * len(TOOLS))], fast_uuid(rng)
        events.append({"type": "tool_call", "name": name, "call_id": call_id, "arguments": {"query": "q3"}})
        answered = r() < 0.9
        if answered:
            result: dict[str, Any] = {"type": "tool_result", "name": name, "call_id": call_id, "result": "3 nodes found"}
            if r() < 0.2:
                result["image_attachment"] = {"attachment_name": "page-3.png", "source_id": fast_uuid(rng)}
            events.append(result)
        calls.append((name, answered))
    if r() < 0.05:
        events.append({"type": UNKNOWN_TYPE, "source": "doc-1", "span": [3, 9]})
    events += [{"type": "text_delta", "content": "The answer"} for _ in range(1 + int(r() * 4))]
    events.append({"type": "text", "content": "The answer is in the attached report, page 3."})
    failed = r() < error_rate
    error_type = ERROR_TYPES[int(r() * len(ERROR_TYPES))] if failed else None
    error = None
    if error_type is not None:
        messages = ERROR_MESSAGES[error_type]
        error = messages[int(r() * len(messages))]
    usage: dict[str, Any] = {
        "duration_ms": round(rng.lognormvariate(7.6, 1.0), 1),
        "total_input_tokens": 200 + int(r() * 23801),
        "total_output_tokens": 20 + int(r() * 2981),
        "turns": 1 + len(calls),
    }
    if r() < 0.05:
        del usage["duration_ms"]
    index_ids = session.index_ids
    skipped = [index_ids[int(r() * len(index_ids))]] if index_ids and r() < 0.1 else []
    stop = {"type": "stop", "is_error": failed, "error": error, "usage": usage, "skipped_index_ids": skipped or None}
    events.append(stop)
    return events, stop_truth(session, stop, error_type, calls)


def lazy_history(session: SimSession) -> tuple[list[dict[str, Any]], list[RunTruth]]:
    """The events and the runs' truths of a lazy session, generated from its seed: the same each time."""
    assert session.lazy is not None, "a lazy session"
    seed, runs, error_rate = session.lazy
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    truths = []
    for _ in range(runs):
        run, truth = lazy_run(rng, session, error_rate)
        events += run
        truths.append(truth)
    return events, truths


def tally(truths: list[RunTruth]) -> Counter[str]:
    """The sums ``totals`` gives of these runs (durations in whole tenths of a millisecond: exact)."""
    sums: Counter[str] = Counter()
    for t in truths:
        sums["runs"] += 1
        sums["errors"] += t.failed
        sums["input_tokens"] += t.input_tokens or 0
        sums["output_tokens"] += t.output_tokens or 0
        if t.duration_ms is not None:
            sums["duration_count"] += 1
            sums["duration_tenths"] += round(t.duration_ms * 10)
        sums["tool_calls"] += len(t.tool_calls)
        sums["index_runs"] += len(t.index_ids) or 1
    return sums


def job_metadata(stop: dict[str, Any]) -> dict[str, Any]:
    """A session's ``job_metadata``: its last run's usage and outcome."""
    return {**stop["usage"], "is_error": stop["is_error"], "error": stop["error"], "export_config_ids": None}


class World:
    def __init__(
        self, seed: int = 1, error_rate: float = 0.15, clock: Callable[[], float] = time.time, lazy: bool = False
    ) -> None:
        self.rng = random.Random(seed)
        self.lazy = lazy
        """``populate`` makes lazy sessions (module docstring)."""
        self.lazy_truth: Counter[str] = Counter()
        """The sums (``tally``) of the runs of lazy sessions not materialized (deleted ones included)."""
        self.error_rate = error_rate
        self.clock = clock
        self.sessions: dict[str, SimSession] = {}
        self._order: list[int] = []  # seq of every live session, ascending: cursor paging
        self._by_seq: dict[int, SimSession] = {}
        self.runs: list[RunTruth] = []
        self.bare_runs = 0
        """Runs of ``bare_session`` histories: successes without usage, under ``index_id="_none"``."""
        self.events: Counter[str] = Counter()
        self._seq = 0
        self._last_ts = 0.0
        self.clock_offset = 0.0
        """Seconds the world's clock is ahead (or behind, negative) of ``clock``: an upstream clock that is off."""

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _touch(self, session: SimSession) -> None:
        self._last_ts = max(self.clock() + self.clock_offset, self._last_ts + 1e-6)
        session.touched = self._last_ts
        session.last_updated_at = datetime.fromtimestamp(self._last_ts, UTC).isoformat()
        session._detail = None

    def set_clock_offset(self, seconds: float) -> None:
        """Shift the world's clock: what changes from now on is stamped ``seconds`` off the real time. Moved
        back, it stamps new runs earlier than the ones before (a fast clock corrected)."""
        if seconds < self.clock_offset:
            self._last_ts = 0.0  # timestamps may go backwards from here on
        self.clock_offset = seconds

    def _count(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            kind = event["type"]
            self.events[kind if kind in KNOWN_EVENT_TYPES else UNKNOWN] += 1

    def _append(self, session: SimSession, events: list[dict[str, Any]]) -> None:
        session.events.extend(events)
        self._count(events)

    def lazy_session(self, runs: int) -> SimSession:
        """A new session of ``runs`` runs kept lazy: a seed, its truth in ``lazy_truth``, no events held."""
        session = self.new_session()
        session.lazy = (self.rng.getrandbits(64), runs, self.error_rate)
        events, truths = lazy_history(session)
        self._count(events)
        self.lazy_truth.update(tally(truths))
        if events:
            session.job_metadata = job_metadata(events[-1])
            self._touch(session)
        return session

    def materialize(self, session: SimSession) -> None:
        """Turn a lazy session into an ordinary one: the same events, all held; its runs' truths in ``runs``."""
        if session.lazy is None:
            return
        events, truths = lazy_history(session)
        session.events, session.lazy = events + session.events, None
        self.lazy_truth.subtract(tally(truths))
        self.runs.extend(truths)

    def new_session(self, runs: int = 0) -> SimSession:
        rng = self.rng
        self._seq += 1
        indexes = None if rng.random() < 0.1 else [INDEXES[rng.randrange(12)] for _ in range(rng.randint(1, 3))]
        session = SimSession(
            self._uuid(),
            self._seq,
            sorted(set(indexes)) if indexes else indexes,
            rng.choice(("query", "read_only")),
            rng.choice(QUESTIONS),
        )
        self.sessions[session.session_id] = session
        self._order.append(session.seq)
        self._by_seq[session.seq] = session
        self._touch(session)
        for _ in range(runs):
            self.add_run(session)
        return session

    def _make_run(
        self, session: SimSession, fail: bool | None = None, input_tokens: int | None = None, error_type: str | None = None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], RunTruth]:
        """The opening events of a run, the rest of them, and its truth (``fail`` forces the outcome,
        ``input_tokens`` the run's input tokens)."""
        rng = self.rng
        head: list[dict[str, Any]] = [{"type": "user_input", "content": rng.choice(QUESTIONS)}]
        if rng.random() < 0.6:
            head += [{"type": "thinking_delta", "content": "Let me look"} for _ in range(rng.randint(1, 3))]
            head.append({"type": "thinking", "content": "Let me look at the indexes for this."})
        tail: list[dict[str, Any]] = []
        calls = []
        for _ in range(rng.choice((0, 0, 1, 1, 2, 3, 5))):
            name, call_id = rng.choice(TOOLS), self._uuid()
            tail.append({"type": "tool_call", "name": name, "call_id": call_id, "arguments": {"query": "q3"}})
            answered = rng.random() < 0.9
            if answered:
                result: dict[str, Any] = {"type": "tool_result", "name": name, "call_id": call_id, "result": "3 nodes found"}
                if rng.random() < 0.2:
                    result["image_attachment"] = {"attachment_name": "page-3.png", "source_id": self._uuid()}
                tail.append(result)
            calls.append((name, answered))
        if rng.random() < 0.05:
            tail.append({"type": UNKNOWN_TYPE, "source": "doc-1", "span": [3, 9]})
        tail += [{"type": "text_delta", "content": "The answer"} for _ in range(rng.randint(1, 4))]
        tail.append({"type": "text", "content": "The answer is in the attached report, page 3."})
        failed = rng.random() < self.error_rate if fail is None else fail
        error_type = (error_type or rng.choice(tuple(ERROR_MESSAGES))) if failed else None
        error = rng.choice(ERROR_MESSAGES[error_type]) if error_type is not None else None
        usage: dict[str, Any] = {
            "duration_ms": round(rng.lognormvariate(7.6, 1.0), 1),
            "total_input_tokens": rng.randint(200, 24000),
            "total_output_tokens": rng.randint(20, 3000),
            "turns": 1 + len(calls),
        }
        if rng.random() < 0.05:
            del usage["duration_ms"]
        if input_tokens is not None:
            usage["total_input_tokens"] = input_tokens
        skipped = [rng.choice(session.index_ids)] if session.index_ids and rng.random() < 0.1 else []
        stop = {"type": "stop", "is_error": failed, "error": error, "usage": usage, "skipped_index_ids": skipped or None}
        tail.append(stop)
        truth = stop_truth(session, stop, error_type, calls)
        return head, tail, truth

    def _finish(self, session: SimSession, tail: list[dict[str, Any]], truth: RunTruth) -> None:
        self._append(session, tail)
        session.job_metadata = job_metadata(tail[-1])
        self.runs.append(truth)
        self._touch(session)

    def add_run(
        self, session: SimSession, fail: bool | None = None, input_tokens: int | None = None, error_type: str | None = None
    ) -> None:
        """A whole run, start to stop (finishing a pending one first); a failed one of ``error_type`` (one of
        ``ERROR_MESSAGES``) when given."""
        if session.pending is not None:
            self.finish_pending(session)
        head, tail, truth = self._make_run(session, fail, input_tokens, error_type)
        self._append(session, head)
        self._finish(session, tail, truth)

    def add_huge_run(self, session: SimSession, size: int) -> None:
        """A run whose tool result alone is ``size`` bytes (a long page of text)."""
        head, tail, truth = self._make_run(session)
        call_id = self._uuid()
        head += [
            {"type": "tool_call", "name": "retrieve_page", "call_id": call_id, "arguments": {"page": 1}},
            {"type": "tool_result", "name": "retrieve_page", "call_id": call_id, "result": "x" * size},
        ]
        truth = RunTruth(**{**truth.__dict__, "tool_calls": (("retrieve_page", True), *truth.tool_calls)})
        self._append(session, head)
        self._finish(session, tail, truth)

    def add_unknown_event(self, session_id: str) -> None:
        """An event of a type the collector has never seen, appended to the session's history."""
        session = self.sessions.get(session_id)
        if session is not None:
            self._append(session, [{"type": "brand_new_event", "payload": {"x": 1}}])
            self._touch(session)

    def start_run(self, session: SimSession) -> None:
        """Open a run and leave it unfinished."""
        if session.pending is not None:
            return
        head, tail, truth = self._make_run(session)
        self._append(session, head)
        session.pending, session.pending_truth = tail, truth
        self._touch(session)

    def finish_pending(self, session: SimSession) -> None:
        if session.pending is not None:
            tail, truth = session.pending, session.pending_truth
            session.pending = session.pending_truth = None
            assert truth is not None, "a pending run has its truth"
            self._finish(session, tail, truth)

    def delete(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is not None:
            self._order.pop(bisect.bisect_left(self._order, session.seq))
            del self._by_seq[session.seq]

    def page_after(self, after_seq: int, size: int) -> tuple[list[SimSession], bool]:
        """Sessions created after ``after_seq``, oldest first, and whether more follow."""
        start = bisect.bisect_right(self._order, after_seq)
        seqs = self._order[start : start + size]
        return [self._by_seq[q] for q in seqs], start + size < len(self._order)

    def position(self, after_seq: int) -> int:
        """How many sessions of the oldest-first listing come up to ``after_seq``."""
        return bisect.bisect_right(self._order, after_seq)

    def newest_first(self) -> list[SimSession]:
        """Every session, the most recently changed first: the order some APIs list in."""
        return sorted(self.sessions.values(), key=lambda s: (s.touched, s.seq), reverse=True)

    def page_at(self, offset: int, size: int) -> tuple[list[SimSession], bool]:
        """The newest-first listing from position ``offset``, and whether more follow. An offset is taken in
        the order of the moment: a session changed mid-pass moves to the front, and the pages after shift."""
        order = self.newest_first()
        return order[offset : offset + size], offset + size < len(order)

    def listing_order(self) -> list[SimSession]:
        """Every session, oldest first (as ``page_after`` pages)."""
        return [self._by_seq[q] for q in self._order]

    def delete_oldest(self, count: int) -> list[str]:
        """Delete the ``count`` sessions listed first; their runs stay in the truth."""
        gone = [self._by_seq[q].session_id for q in self._order[: max(0, count)]]
        for session_id in gone:
            self.delete(session_id)
        return gone

    # -- sessions an API is free to send, at the edge of what a collector must take ---------------------

    def extreme_session(self, what: str, runs: int = 2, title_chars: int = 70_000, tokens: int = 2**53) -> SimSession:
        """A new session with one extreme value: ``zero_time`` (``last_updated_at`` of Go's zero time),
        ``long_title`` (a ``generated_title`` of ``title_chars``), or ``big_tokens`` (``runs`` runs of
        ``tokens`` input tokens each)."""
        if what not in ("zero_time", "long_title", "big_tokens"):
            raise ValueError(f"unknown extreme: {what}")
        session = self.new_session()
        if what == "long_title":
            session.title = ("A very long generated title " * (title_chars // 28 + 1))[:title_chars]
        for _ in range(runs):
            self.add_run(session, input_tokens=tokens if what == "big_tokens" else None)
        if what == "zero_time":
            session.last_updated_at = "0001-01-01T00:00:00Z"
        session._detail = None
        return session

    def decoy_session(self, runs: int = 5, decoy_runs: int = 50, pad: int = 1_100_000) -> SimSession:
        """A new session of ``runs`` runs whose ``retrieve`` body opens with an unknown top-level field
        ``debug`` holding its own ``"events": [...]`` (``decoy_runs`` runs that are not the history) and
        ``pad`` characters of text: a body over 1 MiB when ``pad`` is."""
        session = self.new_session(runs=runs)
        decoy: list[dict[str, Any]] = []
        for _ in range(decoy_runs):
            decoy += [
                {"type": "user_input", "content": "decoy"},
                {
                    "type": "stop",
                    "is_error": False,
                    "error": None,
                    "usage": {"duration_ms": 1.0, "total_input_tokens": 1, "total_output_tokens": 1, "turns": 1},
                    "skipped_index_ids": None,
                },
            ]
        session.leading = {"debug": {"events": decoy, "note": "x" * pad}}
        session._detail = None
        return session

    def bare_session(self, kind: str, count: int) -> SimSession:
        """A session of ``count`` minimal events of one ``kind`` (``{"type": "stop"}`` is a run with no usage):
        the smallest body per event an API can send, to attack memory and the loop. Its runs are counted in
        ``bare_runs``, not in ``runs`` (a million truths would make ``/_sim/truth`` 200 MB)."""
        session = self.new_session()
        session.index_ids, session.compact = None, True
        self._append(session, [{"type": kind} for _ in range(count)])
        if kind == "stop":
            self.bare_runs += count
        self._touch(session)
        session._detail = None
        return session

    def grow_to(self, session: SimSession, events: int, content: int) -> None:
        """Add runs until the session holds ``events`` events, with ``content``-byte texts."""
        text = "lorem ipsum " * (content // 12)
        self.materialize(session)
        while len(session.events) < events:
            head, tail, truth = self._make_run(session)
            for event in head + tail:
                if "content" in event:
                    event["content"] = text
            self._append(session, head)
            self._finish(session, tail, truth)

    def tick(self) -> None:
        """One step of live traffic."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.08 or not self.sessions:
            self.new_session(runs=1)
            return
        session = self.sessions[rng.choice(list(self.sessions))]
        if session.pending is not None:
            self.finish_pending(session)
        elif roll < 0.2:
            self.start_run(session)
        else:
            self.add_run(session)


def populate(world: World, sessions: int, runs: int, unfinished: int = 1) -> World:
    """Sessions with ``runs`` runs each (lazy ones in a lazy world); the first ``unfinished`` also hold a run in
    progress."""
    for i in range(sessions):
        session = world.lazy_session(runs) if world.lazy else world.new_session(runs=runs)
        if i < unfinished:
            world.start_run(session)
    return world
