"""The simulator's HTTP API: the LlamaCloud chat endpoints, plus /_sim controls.

Same paths, cursor paging, bearer auth and payload shapes as the real API.
Faults are queued with ``Faults.add`` (or ``GET /_sim/fault?kind=...``) and
consumed by the next matching requests: ``endpoint`` is ``list``, ``retrieve``,
``summary``, ``*``, or ``list_first`` / ``list_next`` for a listing page asked
without / with a page token. How the listing behaves for good (order, a page size
cap, a page whose token is too long, cursors forgotten) is set with
``GET /_sim/listing?...`` (``Listing``); the world's clock with ``/_sim/clock``; the distance with
``/_sim/latency?seconds=``; an upstream rate limit with ``/_sim/ratelimit?limit=N&window=SECONDS`` (``RateLimit``:
over ``limit`` requests in a sliding window, a 429 with ``Retry-After``; every answer carries
``X-RateLimit-Limit`` and ``X-RateLimit-Remaining``; ``limit=0`` lifts it). ``/_sim/arrivals`` gives when each of
the last requests arrived (monotonic seconds), to which endpoint, and the status it got.

Several projects (``SimulatorService(projects=N)``, ``simulate --projects N``): ``GET /api/v1/projects``
lists them (a plain list, as the vendor's API; the first is the default), chat requests pick one by
``project_id`` (none: the default), and controls take ``project=<id>`` (none: the default); a fault with
``project=`` takes only that project's requests. The listing's behaviour (``Listing``) is shared.

Controls (``GET``): ``stats``, ``totals`` (sums of the truth), ``truth``, ``sessions`` (in listing order,
with their runs), ``traffic?pause=1``, ``touch?fraction=|first=N|last=1[&fail=1|0][&error_type=T]``, ``big``,
``fault?kind=&endpoint=&times=``, ``listing?order=newest|oldest&page_cap=&long_token_page=&long_token_length=
&forget_cursors=1``, ``clock?offset=SECONDS``, ``delete?count=N`` (the oldest), ``extreme?what=zero_time|
long_title|big_tokens``, ``decoy?runs=&decoy_runs=&pad=`` (a body with a leading ``debug.events``), ``bare?kind=stop&count=N`` (a
session of N minimal events).

It is served by ``aiohttp.web``; as a test double it keeps raw control of the
connection where a fault needs it (a reset, a body cut short).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from collector.simulator.world import ERROR_MESSAGES, World

FAULT_KINDS = (
    "status",
    "reset",
    "cut",
    "bad_json",
    "html",
    "content_type",
    "slow",
    "gone",
    "shrink",
    "unknown_event",
    "empty",
    "truncate",
    "loop",
)
"""``empty``: a listing page answered ``{"items": [], "next_page_token": null}``; ``truncate``: the page as it
is, with no next page (the listing ends early); ``loop``: the page's next token is the one it was asked with
(the listing loops back)."""


@dataclass
class Fault:
    kind: str  # one of FAULT_KINDS
    endpoint: str = "*"
    status: int = 503
    retry_after: str | None = None
    delay: float = 0.0
    project: str = "*"
    """The project whose requests it takes (``*``: any)."""


class Faults:
    def __init__(self) -> None:
        self.queue: deque[Fault] = deque()
        self.injected: Counter[str] = Counter()

    def add(self, fault: Fault, times: int = 1) -> None:
        self.queue.extend([fault] * times)

    def take(self, endpoint: str, *aliases: str, project: str = "*") -> Fault | None:
        for i, fault in enumerate(self.queue):
            if fault.endpoint in ("*", endpoint, *aliases) and fault.project in ("*", project):
                del self.queue[i]
                self.injected[fault.kind] += 1
                return fault
        return None


@dataclass(frozen=True)
class Request:
    """What the simulator reads of a request: path segments decoded one by one, query, headers."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    parts: tuple[str, ...] = ()

    @classmethod
    def of(cls, path: str, query: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> Request:
        return cls(path, query or {}, headers or {}, tuple(path.strip("/").split("/")))


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    truncate_at: int | None = None
    """Announce the whole Content-Length, send only this many body bytes, then drop the connection."""
    reset: bool = False
    """Drop the connection without answering."""


@dataclass
class Listing:
    """How the listing behaves until changed: what ``GET /_sim/listing`` sets."""

    newest_first: bool = False
    """List the most recently changed first; a page token is then a position in the order of the moment."""
    page_cap: int | None = None
    """At most this many items a page, whatever ``page_size`` asks."""
    long_token_page: int | None = None
    """This page (1 = the first) carries a ``next_page_token`` of ``long_token_length`` characters."""
    long_token_length: int = 5000
    epoch: int = 0
    """Raised by ``forget_cursors``: a page token issued in an earlier epoch is refused with 400."""
    refused: int = 0
    """Page tokens refused so far."""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RateLimit:
    """An upstream rate limit: at most ``limit`` requests in any ``window`` seconds (a sliding log)."""

    limit: int = 0
    """0: none."""
    window: float = 1.0
    seen: deque[float] = field(default_factory=deque)
    refused: int = 0

    def admit(self, now: float) -> tuple[int, float | None]:
        """The requests left after this one, and None, or 0 and the seconds to wait (refused: not counted)."""
        while self.seen and self.seen[0] <= now - self.window:
            self.seen.popleft()
        if len(self.seen) >= self.limit:
            self.refused += 1
            return 0, self.seen[0] + self.window - now
        self.seen.append(now)
        return self.limit - len(self.seen), None

    def as_dict(self) -> dict[str, Any]:
        return {"limit": self.limit, "window": self.window, "refused": self.refused}


ARRIVALS = 100_000
"""Requests remembered by ``/_sim/arrivals``."""


def _json(payload: object, status: int = 200) -> Response:
    return Response(status, json.dumps(payload).encode(), "application/json")


def read_request(request: web.Request) -> Request:
    raw = request.rel_url.raw_path
    parts = tuple(unquote(p) for p in raw.strip("/").split("/"))
    return Request(request.path, dict(request.query), {k.lower(): v for k, v in request.headers.items()}, parts)


async def send(request: web.Request, answer: Response) -> web.StreamResponse:
    """Write ``answer``, including the faults that need the raw connection."""
    if answer.reset:
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # aiohttp ends the handler quietly; there is no one to answer
    response = web.StreamResponse(status=answer.status, headers={"Content-Type": answer.content_type, **answer.headers})
    response.content_length = len(answer.body)
    await response.prepare(request)
    if answer.truncate_at is not None:
        await response.write(answer.body[: answer.truncate_at])
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError
    await response.write(answer.body)
    await response.write_eof()
    return response


ORGANIZATION_ID = "5f0e2b7a-0c1d-4e7f-9a3b-000000000001"
"""The simulator's one organization."""


def project_id(number: int) -> str:
    """The simulator's project IDs: UUIDs, the first one the default project."""
    return f"7c2d9e41-3b5a-4f60-8e1d-{number:012d}"


class SimulatorApi:
    def __init__(
        self,
        world: World,
        api_key: str,
        faults: Faults | None = None,
        latency: float = 0.0,
        others: tuple[World, ...] = (),
    ) -> None:
        self.world, self.api_key = world, api_key
        self.projects: dict[str, World] = {project_id(i): w for i, w in enumerate((world, *others))}
        """Every project's world; ``world`` is the default project's. With one project, any ``project_id`` is
        it (as before projects); with several, an unknown one is a 404."""
        self.latency = latency
        """Seconds added to every API answer: a real API is 50-300 ms away."""
        self.faults = faults or Faults()
        self.calls: Counter[str] = Counter()
        self.bytes_sent = 0
        self.last_query: dict[str, str] = {}
        self.paused = False
        self.listing = Listing()
        self.rate_limit = RateLimit()
        self.projects_asked: deque[str] = deque(maxlen=ARRIVALS)
        """The project of each chat request, in the order they arrived."""
        self.arrivals: deque[tuple[float, str, int]] = deque(maxlen=ARRIVALS)
        """``(monotonic seconds, endpoint, status)`` of each API request, as it arrived."""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        return await send(request, await self(read_request(request)))

    async def __call__(self, request: Request) -> Response:
        if request.path.startswith("/_sim/"):
            return self._control(request)
        arrived = time.monotonic()
        if self.latency:
            await asyncio.sleep(self.latency)
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _json({"detail": "Invalid authentication credentials"}, 401)
        parts = list(request.parts)
        if parts == ["api", "v1", "projects"]:
            self.calls["projects"] += 1
            fault = self.faults.take("projects")
            if fault is not None and fault.kind == "status":  # the projects listing refused, or rate limited
                self.arrivals.append((arrived, "projects", fault.status))
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                return Response(fault.status, b'{"detail": "fault"}', headers=headers)
            self.arrivals.append((arrived, "projects", 200))
            return _json(self.project_list(request.query.get("organization_id")))
        if parts[:3] != ["api", "v1", "chat"] or len(parts) > 5:
            return _json({"detail": "Not Found"}, 404)
        project = request.query.get("project_id") or project_id(0)
        world = self.world_of(request)
        if world is None:
            return _json({"detail": "Project not found"}, 404)
        endpoint = "list" if len(parts) == 3 else "retrieve" if len(parts) == 4 else "summary"
        if endpoint == "summary" and parts[4] != "summary":
            return _json({"detail": "Not Found"}, 404)
        self.calls[endpoint] += 1
        self.projects_asked.append(project)
        self.last_query = dict(request.query)
        limited, limit_headers = self._limited(arrived)
        if limited is not None:
            self.arrivals.append((arrived, endpoint, limited.status))
            return limited
        aliases = () if endpoint != "list" else ("list_next",) if request.query.get("page_token") else ("list_first",)
        fault = self.faults.take(endpoint, *aliases, project=project)
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.kind == "gone" and len(parts) > 3:
            world.delete(parts[3])
        if fault is not None and fault.kind == "unknown_event" and len(parts) > 3:
            world.add_unknown_event(parts[3])
        response = self._answer(endpoint, parts, request)
        if fault is not None:
            response = self._fault(fault, response, parts, request)
        response.headers.update(limit_headers)
        self.arrivals.append((arrived, endpoint, response.status))
        self.bytes_sent += len(response.body)
        return response

    def _limited(self, now: float) -> tuple[Response | None, dict[str, str]]:
        """A 429 when the rate limit is spent (with how long to wait), or None: the request goes on; and the
        rate-limit headers every answer carries."""
        limit = self.rate_limit
        if not limit.limit:
            return None, {}
        remaining, wait = limit.admit(now)
        headers = {"X-RateLimit-Limit": str(limit.limit), "X-RateLimit-Remaining": str(remaining)}
        if wait is None:
            return None, headers
        response = _json({"detail": "Too many requests"}, 429)
        response.headers.update({**headers, "Retry-After": str(max(1, math.ceil(wait)))})
        return response, headers

    def project_list(self, organization_id: str | None) -> list[dict[str, Any]]:
        """``GET /api/v1/projects``: every project of the organization (a plain list, as the vendor's API)."""
        if organization_id not in (None, "", ORGANIZATION_ID):
            return []
        return [
            {
                "id": pid,
                "name": "Default" if i == 0 else f"project-{i}",
                "organization_id": ORGANIZATION_ID,
                "is_default": i == 0,
                "created_at": "2026-01-01T00:00:00Z",
                "updated_at": "2026-01-01T00:00:00Z",
            }
            for i, pid in enumerate(self.projects)
        ]

    def world_of(self, request: Request) -> World | None:
        """The world of the request's ``project_id`` (none: the default project's; unknown: None)."""
        wanted = request.query.get("project_id") or project_id(0)
        return self.projects.get(wanted, self.world if len(self.projects) == 1 else None)

    def _answer(self, endpoint: str, parts: list[str], request: Request) -> Response:
        world = self.world_of(request)
        assert world is not None, "checked by __call__"
        if endpoint == "list":
            return self._list(world, request)
        session = world.sessions.get(parts[3])
        if session is None:
            return _json({"detail": "Chat session not found"}, 404)
        if endpoint == "summary":
            return _json(session.summary())
        return Response(200, session.detail_bytes(), "application/json")

    # -- the listing ------------------------------------------------------------------------------------

    def _token(self, kind: str, number: int, page: int) -> str:
        """A page token: ``[epoch:]`` then ``n`` and a position (newest first) or the last item's seq. Zeros pad
        the number on the page that carries a long token, so it still reads as the same token."""
        listing = self.listing
        head = f"{listing.epoch}:" if listing.epoch else ""
        kind = "n" if kind == "offset" else ""
        digits = str(number)
        if listing.long_token_page == page:
            digits = digits.rjust(max(len(digits), listing.long_token_length - len(head) - len(kind)), "0")
        return head + kind + digits

    def _read_token(self, token: str) -> tuple[str, int] | None:
        """``(kind, number)`` of a token this simulator issued in the current epoch; None: refused."""
        epoch, _, body = token.rpartition(":")
        if (int(epoch) if epoch.isdigit() else 0 if not epoch else -1) != self.listing.epoch:
            return None
        kind = "offset" if body.startswith("n") else "seq"
        digits = (body[1:] if kind == "offset" else body).lstrip("0") or "0"
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 18 or (kind == "offset") != self.listing.newest_first:
            return None
        return kind, int(digits)

    def _list(self, world: World, request: Request) -> Response:
        listing = self.listing
        size = max(1, min(1000, int(request.query.get("page_size") or 20)))
        if listing.page_cap:
            size = min(size, listing.page_cap)
        raw = request.query.get("page_token")
        if raw:
            read = self._read_token(raw)
            if read is None:
                listing.refused += 1
                return _json({"detail": "Invalid or expired page token"}, 400)
            kind, number = read
        else:
            kind, number = ("offset" if listing.newest_first else "seq"), 0
        if kind == "offset":
            page, more = world.page_at(number, size)
            start, next_number = number, number + len(page)
        else:
            start = world.position(number)
            page, more = world.page_after(number, size)
            next_number = page[-1].seq if page else number
        token = self._token(kind, next_number, start // size + 1) if more else None
        return _json({"items": [s.summary() for s in page], "next_page_token": token})

    def _fault(self, fault: Fault, real: Response, parts: list[str], request: Request | None = None) -> Response:
        """The answer a fault turns ``real`` into."""
        kind = fault.kind
        if kind == "status":
            response = _json({"detail": "injected"}, fault.status)
            if fault.retry_after is not None:
                response.headers["Retry-After"] = fault.retry_after
            return response
        if kind == "reset":
            return Response(reset=True)
        if kind == "cut":  # headers promise the whole body; the connection drops half way
            return Response(200, real.body, "application/json", truncate_at=len(real.body) // 2)
        if kind == "bad_json":  # a complete HTTP answer whose JSON is cut short
            return Response(200, real.body[: max(1, len(real.body) // 2)], "application/json")
        if kind == "html":
            return Response(200, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html")
        if kind == "content_type":
            return Response(200, real.body, "text/plain")
        if kind == "shrink" and len(parts) == 4 and real.status == 200:
            body = json.loads(real.body)
            body["events"] = body["events"][: len(body["events"]) // 2]
            return _json(body)
        if kind in ("empty", "truncate", "loop") and len(parts) == 3 and real.status == 200:
            body = json.loads(real.body)
            if kind == "empty":
                body["items"] = []
            asked = request.query.get("page_token") if request is not None else None
            body["next_page_token"] = asked or None if kind == "loop" else None
            return _json(body)
        return real  # slow (already delayed), gone (deleted), unknown_event (added to the session)

    def _control(self, request: Request) -> Response:
        world = self.projects.get(request.query.get("project") or project_id(0))
        if world is None:
            return _json({"detail": "no such project"}, 404)
        if request.path == "/_sim/stats":
            truth = {
                "runs": len(world.runs) + world.lazy_truth["runs"],
                "errors": sum(r.failed for r in world.runs) + world.lazy_truth["errors"],
                "sessions": len(world.sessions),
                "calls": dict(self.calls),
                "bytes_sent": self.bytes_sent,
                "faults_injected": dict(self.faults.injected),
                "listing": self.listing.as_dict(),
                "clock_offset": world.clock_offset,
            }
            return _json(truth)
        if request.path == "/_sim/totals":
            return _json(totals(world))
        if request.path == "/_sim/sessions":  # in the order the listing pages them now
            runs = Counter(r.session_id for r in world.runs)
            order = world.newest_first() if self.listing.newest_first else world.listing_order()
            return _json(
                {
                    "sessions": [
                        {
                            "session_id": s.session_id,
                            "runs": runs[s.session_id] + (s.lazy[1] if s.lazy else 0),
                            "last_updated_at": s.last_updated_at,
                        }
                        for s in order
                    ]
                }
            )
        if request.path == "/_sim/listing":
            return self._listing_control(request.query)
        if request.path == "/_sim/clock":
            if "offset" in request.query:
                world.set_clock_offset(float(request.query["offset"]))
            return _json({"offset": world.clock_offset})
        if request.path == "/_sim/latency":
            if "seconds" in request.query:
                self.latency = max(0.0, float(request.query["seconds"]))
            return _json({"seconds": self.latency})
        if request.path == "/_sim/ratelimit":
            q = request.query
            if "limit" in q:
                self.rate_limit = RateLimit(int(q["limit"]), float(q.get("window", 1.0)))
            return _json(self.rate_limit.as_dict())
        if request.path == "/_sim/arrivals":
            return _json({"arrivals": [list(a) for a in self.arrivals]})
        if request.path == "/_sim/delete":
            gone = world.delete_oldest(int(request.query.get("count", "1")))
            return _json({"deleted": len(gone), "sessions": len(world.sessions)})
        if request.path == "/_sim/extreme":
            q = request.query
            try:
                session = world.extreme_session(
                    q.get("what", ""), int(q.get("runs", 2)), int(q.get("title_chars", 70_000)), int(q.get("tokens", 2**53))
                )
            except ValueError as exc:
                return _json({"detail": str(exc)}, 400)
            return _json(
                {
                    "session_id": session.session_id,
                    "last_updated_at": session.last_updated_at,
                    "title_chars": len(session.title),
                    "bytes": len(session.detail_bytes()),
                }
            )
        if request.path == "/_sim/decoy":
            q = request.query
            session = world.decoy_session(int(q.get("runs", 5)), int(q.get("decoy_runs", 50)), int(q.get("pad", 1_100_000)))
            return _json({"session_id": session.session_id, "bytes": len(session.detail_bytes())})
        if request.path == "/_sim/bare":
            session = world.bare_session(request.query.get("kind", "stop"), int(request.query.get("count", "1000")))
            return _json(
                {
                    "session_id": session.session_id,
                    "bytes": len(session.detail_bytes()),
                    "events": len(session.events),
                    "bare_runs": world.bare_runs,
                }
            )
        if request.path == "/_sim/truth":  # a lazy world's lazy sessions' runs are sums (``lazy``), not listed
            truth = {"runs": [r.__dict__ for r in world.runs], "events": dict(world.events)}
            if world.lazy:
                truth["lazy"] = dict(world.lazy_truth)
            return _json(truth)
        if request.path == "/_sim/traffic":
            self.paused = request.query.get("pause") == "1"
            return _json({"paused": self.paused})
        if request.path == "/_sim/big":
            session = world.new_session()
            world.grow_to(session, int(request.query.get("events", "100000")), int(request.query.get("content", "300")))
            return _json({"session_id": session.session_id, "bytes": len(session.detail_bytes()), "events": len(session.events)})
        if request.path == "/_sim/touch":
            fraction = float(request.query.get("fraction", "0.1"))
            fail = {"1": True, "0": False}.get(request.query.get("fail", ""))
            first = int(request.query.get("first", "0"))
            chosen = (
                [next(reversed(world.sessions))]
                if request.query.get("last") == "1"
                else [s.session_id for s in world.listing_order()[:first]]
                if first
                else world.rng.sample(list(world.sessions), int(len(world.sessions) * fraction))
            )
            error_type = request.query.get("error_type")
            if error_type is not None and error_type not in ERROR_MESSAGES:
                return _json({"detail": f"error_type is one of {sorted(ERROR_MESSAGES)}"}, 400)
            for session_id in chosen:
                world.add_run(world.sessions[session_id], True if error_type is not None else fail, error_type=error_type)
            return _json({"changed": len(chosen)})
        if request.path == "/_sim/fault":
            q = request.query
            fault = Fault(
                q.get("kind", "status"),
                q.get("endpoint", "*"),
                int(q.get("status", 503)),
                q.get("retry_after"),
                float(q.get("delay", 0)),
                q.get("project", "*"),
            )
            self.faults.add(fault, int(q.get("times", 1)))
            return _json({"queued": len(self.faults.queue)})
        return _json({"detail": "Not Found"}, 404)

    def _listing_control(self, q: dict[str, str]) -> Response:
        """``order=newest|oldest``, ``page_cap=N`` (0: none), ``long_token_page=N`` (0: none) with
        ``long_token_length``, ``forget_cursors=1`` (every token issued before is refused from now on)."""
        listing = self.listing
        if "order" in q:
            newest = q["order"] == "newest"
            if newest != listing.newest_first:
                listing.epoch += 1  # a token of the old order means nothing in the new one
            listing.newest_first = newest
        if "page_cap" in q:
            listing.page_cap = int(q["page_cap"]) or None
        if "long_token_page" in q:
            listing.long_token_page = int(q["long_token_page"]) or None
        if "long_token_length" in q:
            listing.long_token_length = int(q["long_token_length"])
        if q.get("forget_cursors") == "1":
            listing.epoch += 1
        return _json(listing.as_dict())


def totals(world: World) -> dict[str, Any]:
    """Sums of the truth a benchmark compares with, without shipping every run (``/_sim/truth``). In a lazy world
    they add the sums of the lazy sessions' runs, and the durations are summed in tenths of a millisecond: the
    same figures whichever sessions were materialized."""
    runs, lazy = world.runs, world.lazy_truth
    durations = [r.duration_ms for r in runs if r.duration_ms is not None]
    duration_sum = (
        (lazy["duration_tenths"] + sum(round(d * 10) for d in durations)) / 10_000 if world.lazy else sum(durations) / 1000
    )
    return {
        "runs": len(runs) + lazy["runs"],
        "bare_runs": world.bare_runs,
        "errors": sum(r.failed for r in runs) + lazy["errors"],
        "input_tokens": sum(r.input_tokens or 0 for r in runs) + lazy["input_tokens"],
        "output_tokens": sum(r.output_tokens or 0 for r in runs) + lazy["output_tokens"],
        "duration_count": len(durations) + lazy["duration_count"],
        "duration_seconds_sum": duration_sum,
        "tool_calls": sum(len(r.tool_calls) for r in runs) + lazy["tool_calls"],
        "index_runs": sum(len(r.index_ids) or 1 for r in runs) + lazy["index_runs"],
        "sessions": len(world.sessions),
    }
