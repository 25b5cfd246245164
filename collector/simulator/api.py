"""The simulator's HTTP API: the LlamaCloud chat endpoints, plus /_sim controls.

Same paths, cursor paging, bearer auth and payload shapes as the real API.
Faults are queued with ``Faults.add`` (or ``GET /_sim/fault?kind=...``) and
consumed by the next matching requests. It is served by ``aiohttp.web``; as a
test double it keeps raw control of the connection where a fault needs it
(a reset, a body cut short).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, deque
from dataclasses import dataclass, field
from urllib.parse import unquote

from aiohttp import web

from collector.simulator.world import World

FAULT_KINDS = ("status", "reset", "cut", "bad_json", "html", "content_type", "slow", "gone", "shrink",
               "unknown_event")


@dataclass
class Fault:
    kind: str  # one of FAULT_KINDS
    endpoint: str = "*"
    status: int = 503
    retry_after: str | None = None
    delay: float = 0.0


class Faults:
    def __init__(self) -> None:
        self.queue: deque[Fault] = deque()
        self.injected: Counter = Counter()

    def add(self, fault: Fault, times: int = 1) -> None:
        self.queue.extend([fault] * times)

    def take(self, endpoint: str) -> Fault | None:
        for i, fault in enumerate(self.queue):
            if fault.endpoint in ("*", endpoint):
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
    response = web.StreamResponse(status=answer.status, headers={"Content-Type": answer.content_type,
                                                                 **answer.headers})
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


class SimulatorApi:
    def __init__(self, world: World, api_key: str, faults: Faults | None = None, latency: float = 0.0) -> None:
        self.world, self.api_key = world, api_key
        self.latency = latency
        """Seconds added to every API answer: a real API is 50-300 ms away."""
        self.faults = faults or Faults()
        self.calls: Counter = Counter()
        self.bytes_sent = 0
        self.last_query: dict[str, str] = {}
        self.paused = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        return await send(request, await self(read_request(request)))

    async def __call__(self, request: Request) -> Response:
        if request.path.startswith("/_sim/"):
            return self._control(request)
        if self.latency:
            await asyncio.sleep(self.latency)
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _json({"detail": "Invalid authentication credentials"}, 401)
        parts = list(request.parts)
        if parts[:3] != ["api", "v1", "chat"] or len(parts) > 5:
            return _json({"detail": "Not Found"}, 404)
        endpoint = "list" if len(parts) == 3 else "retrieve" if len(parts) == 4 else "summary"
        if endpoint == "summary" and parts[4] != "summary":
            return _json({"detail": "Not Found"}, 404)
        self.calls[endpoint] += 1
        self.last_query = dict(request.query)
        fault = self.faults.take(endpoint)
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.kind == "gone" and len(parts) > 3:
            self.world.delete(parts[3])
        if fault is not None and fault.kind == "unknown_event" and len(parts) > 3:
            self.world.add_unknown_event(parts[3])
        response = self._answer(endpoint, parts, request)
        if fault is not None:
            response = self._fault(fault, response, parts)
        self.bytes_sent += len(response.body)
        return response

    def _answer(self, endpoint: str, parts: list[str], request: Request) -> Response:
        world = self.world
        if endpoint == "list":
            size = max(1, min(1000, int(request.query.get("page_size") or 20)))
            after = int(request.query.get("page_token") or 0)
            page, more = world.page_after(after, size)
            token = str(page[-1].seq) if more else None
            return _json({"items": [s.summary() for s in page], "next_page_token": token})
        session = world.sessions.get(parts[3])
        if session is None:
            return _json({"detail": "Chat session not found"}, 404)
        if endpoint == "summary":
            return _json(session.summary())
        return Response(200, session.detail_bytes(), "application/json")

    def _fault(self, fault: Fault, real: Response, parts: list[str]) -> Response:
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
        return real  # slow (already delayed), gone (deleted), unknown_event (added to the session)

    def _control(self, request: Request) -> Response:
        world = self.world
        if request.path == "/_sim/stats":
            truth = {"runs": len(world.runs), "errors": sum(r.failed for r in world.runs),
                     "sessions": len(world.sessions), "calls": dict(self.calls), "bytes_sent": self.bytes_sent,
                     "faults_injected": dict(self.faults.injected)}
            return _json(truth)
        if request.path == "/_sim/truth":
            return _json({"runs": [r.__dict__ for r in world.runs], "events": dict(world.events)})
        if request.path == "/_sim/traffic":
            self.paused = request.query.get("pause") == "1"
            return _json({"paused": self.paused})
        if request.path == "/_sim/big":
            session = world.new_session()
            world.grow_to(session, int(request.query.get("events", "100000")), int(request.query.get("content", "300")))
            return _json({"session_id": session.session_id, "bytes": len(session.detail_bytes()),
                          "events": len(session.events)})
        if request.path == "/_sim/touch":
            fraction = float(request.query.get("fraction", "0.1"))
            fail = {"1": True, "0": False}.get(request.query.get("fail", ""))
            chosen = ([next(reversed(world.sessions))] if request.query.get("last") == "1" else
                      world.rng.sample(list(world.sessions), int(len(world.sessions) * fraction)))
            for session_id in chosen:
                world.add_run(world.sessions[session_id], fail)
            return _json({"changed": len(chosen)})
        if request.path == "/_sim/fault":
            q = request.query
            fault = Fault(q.get("kind", "status"), q.get("endpoint", "*"), int(q.get("status", 503)),
                          q.get("retry_after"), float(q.get("delay", 0)))
            self.faults.add(fault, int(q.get("times", 1)))
            return _json({"queued": len(self.faults.queue)})
        return _json({"detail": "Not Found"}, 404)
