"""The collector's endpoints on ``aiohttp.web``: /metrics, /healthz, /readyz and a status page at /.

Every answer is built from the latest snapshot; nothing here touches the API,
so a scrape never waits on it. ``/metrics`` is rendered once per snapshot,
format and encoding, then served from that cache, a piece at a time: the next
piece is written once the last one has left the process, so a client that does
not read holds one piece, and it is reset after ``SEND_TIMEOUT``. ``/healthz`` and ``/readyz``
need no auth (kubelet probes carry none); ``/metrics`` and ``/`` do when the
web config sets users.
"""

from __future__ import annotations

import asyncio
import gzip
import html
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from collector import __version__, listener
from collector.auth import WebConfig
from collector.cadence import Cadence
from collector.listener import SEND_TIMEOUT, peer_key
from collector.state import FleetSnapshot

WRITE_PIECE = 16 * 1024
"""What one connection's answer holds in the process at most (Envoy's edge default per connection is 32 KiB)."""
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def _quality(params: str) -> float:
    for param in params.split(";"):
        key, _, raw = param.partition("=")
        if key.strip().lower() == "q":
            try:
                return float(raw.strip())
            except ValueError:
                return 0.0
    return 1.0


def accepts_gzip(header: str) -> bool:
    """Whether an ``Accept-Encoding`` value admits gzip, honouring q-values (``gzip;q=0`` means no).

    aiohttp parses the request; this only reads the one header value it hands over.
    """
    named: float | None = None
    wildcard: float | None = None
    for item in header.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        if coding in ("gzip", "x-gzip"):
            named = max(named or 0.0, _quality(params))
        elif coding == "*":
            wildcard = _quality(params)
    quality = named if named is not None else wildcard
    return quality is not None and quality > 0


FORMATS = {"openmetrics": "application/openmetrics-text; version=1.0.0", "text": "text/plain; version=0.0.4"}
"""The closed set of formats served: what a client sends only picks one, never a key of its own."""


def negotiated(accept: str) -> str:
    """``openmetrics`` when the client asks for it, else ``text``; parameters (version, escaping) are not echoed."""
    _, content_type = choose_encoder(accept[:4096])
    return "openmetrics" if content_type.startswith("application/openmetrics-text") else "text"


class MetricsCache:
    """``/metrics`` bodies for one snapshot, by format and encoding: at most four, whatever clients send."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.snapshot: object = None
        self.bodies: dict[tuple[str, bool], bytes] = {}
        self.renders = 0

    def body(self, snapshot: object, accept: str, gzipped: bool) -> tuple[bytes, str]:
        if snapshot is not self.snapshot:
            self.snapshot, self.bodies = snapshot, {}
        encoder, content_type = choose_encoder(FORMATS[negotiated(accept)])
        key = (content_type, gzipped)
        body = self.bodies.get(key)
        if body is None:
            plain = self.bodies.get((content_type, False))
            if plain is None:
                plain = self.bodies[(content_type, False)] = encoder(self.registry)
                self.renders += 1
            body = self.bodies[key] = gzip.compress(plain, compresslevel=5) if gzipped else plain
        return body, content_type


class StatusSource(Protocol):
    """What the endpoints read of the poll loop: every project's latest snapshot, and when a cycle last started
    and ended (``projects.Fleet``)."""

    @property
    def snapshot(self) -> FleetSnapshot: ...
    @property
    def cycle_started(self) -> float | None: ...
    @property
    def cycle_finished(self) -> float | None: ...
    @property
    def loaded_at(self) -> float | None: ...


class Endpoints:
    def __init__(
        self,
        registry: CollectorRegistry,
        poller: StatusSource,
        cadence: Cadence,
        web_config: WebConfig,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.poller, self.cadence, self.web = poller, cadence, web_config
        self.cache = MetricsCache(registry)
        self.monotonic = monotonic
        self.started = monotonic()
        self.log = structlog.get_logger("collector.server")

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=1024)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/", self.index)
        return app

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Auth where it applies, the configured headers on every answer, and no traceback for a bug."""
        self.web.refresh()
        try:
            if request.path not in OPEN_PATHS and not await self.web.authorized(
                request.headers.get("Authorization"),
                peer_key(request.transport.get_extra_info("peername") if request.transport else None),
            ):
                response: web.StreamResponse = web.Response(
                    status=401, text="unauthorized\n", headers={"WWW-Authenticate": 'Basic realm="llamacloud-collector"'}
                )
            else:
                response = await handler(request)
        except web.HTTPException as exc:  # 404, 405: aiohttp answers them; they carry the headers too
            exc.headers.update(self.web.headers)
            raise
        except Exception as exc:  # noqa: BLE001 - a bug here is one log line and a 500, never a dump
            self.log.error("request failed", path=request.path[:100], error=f"{type(exc).__name__}: {exc}"[:300])
            response = web.Response(status=500, text="internal error\n")
        if not response.prepared:
            response.headers.update(self.web.headers)
        return response

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        gzipped = accepts_gzip(request.headers.get("Accept-Encoding", ""))
        body, content_type = self.cache.body(self.poller.snapshot, request.headers.get("Accept", ""), gzipped)
        response = web.StreamResponse(
            headers={
                "Content-Type": content_type,
                "Vary": "Accept, Accept-Encoding",
                **({"Content-Encoding": "gzip"} if gzipped else {}),
                **self.web.headers,
            }
        )
        response.content_length = len(body)
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                await response.prepare(request)
                if request.method != "HEAD":
                    view = memoryview(body)
                    for start in range(0, len(body), WRITE_PIECE):  # never a whole copy per client:
                        await response.write(view[start : start + WRITE_PIECE])
                        await listener.drained(request)  # the next piece once this one left the process
                await response.write_eof()
        except (TimeoutError, ConnectionError):  # a client that does not read, or left mid-answer: let go of it
            listener.give_up(request)
        return response

    def alive(self) -> bool:
        """False when no cycle has started or finished within the cadence's liveness window: a stuck loop. The
        window counts from the end of the state's load, not from the start: a big state file loads in a thread
        while /healthz answers, and the first cycle waits for it."""
        if self.poller.loaded_at is None:
            return True  # still loading (in a thread, off the loop): not stuck
        marks = [m for m in (self.poller.cycle_started, self.poller.cycle_finished) if m is not None]
        last = max(marks, default=max(self.started, self.poller.loaded_at))
        return self.monotonic() - last <= self.cadence.liveness

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n") if self.alive() else web.Response(status=503, text="poll loop stuck\n")

    async def readyz(self, _: web.Request) -> web.Response:
        if self.poller.snapshot.ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="first sync not finished\n")

    async def index(self, _: web.Request) -> web.Response:
        fleet = self.poller.snapshot
        rows = [("ready", "yes" if fleet.ready else "no (first sync not finished)")]
        for project in fleet.projects:
            snap = project.snapshot
            poll = snap.poll
            if len(fleet.projects) > 1 or project.project_id:
                rows.append(("project", f"{project.name} ({project.project_id})" if project.project_id else "default"))
            rows += [
                ("last poll", poll.result or "none yet"),
                ("API reachable", "yes" if poll.up else "no"),
                (
                    "last poll finished",
                    time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(poll.finished_at)) if poll.finished_at else "never",
                ),
                ("poll duration", f"{poll.duration:.3f} s" if poll.duration is not None else "-"),
                ("sessions watched", str(snap.sessions_watched)),
                ("runs counted", str(sum(snap.aggregates.runs.values()))),
                ("last error", poll.message or "-"),
            ]
        table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>llamacloud-collector</title>"
            "<style>body{font-family:sans-serif;margin:2em}th{text-align:left;padding-right:1em}</style>"
            f"</head><body><h1>llamacloud-collector {__version__}</h1><table>{table}</table>"
            "<p><a href='/metrics'>/metrics</a> · <a href='/healthz'>/healthz</a> · "
            "<a href='/readyz'>/readyz</a></p></body></html>"
        )
        return web.Response(text=page, content_type="text/html")
