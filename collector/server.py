"""The collector's endpoints: /metrics, /healthz, /readyz and a status page at /.

Every answer is built from the latest snapshot; nothing here touches the API,
so a scrape never waits on it.
"""

from __future__ import annotations

import gzip
import html
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from collector import __version__
from collector.httpserver import Request, Response, text
from collector.poller import Poller
from collector.webconfig import WebConfig

STALE_INTERVALS = 3


class Endpoints:
    def __init__(self, registry: CollectorRegistry, poller: Poller, interval: float, web: WebConfig,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.registry, self.poller, self.interval, self.web = registry, poller, interval, web
        self.monotonic = monotonic
        self.started = monotonic()

    async def __call__(self, request: Request) -> Response:
        self.web.refresh()
        if not self.web.authorized(request.headers.get("authorization")):
            response = text(401, "unauthorized")
            response.headers["WWW-Authenticate"] = 'Basic realm="llamacloud-collector"'
            return response
        route = {"/metrics": self.metrics, "/healthz": self.healthz, "/readyz": self.readyz,
                 "/": self.index}.get(request.path.rstrip("/") or "/")
        return route(request) if route else text(404, "not found")

    def metrics(self, request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        body = encoder(self.registry)
        headers = {"Vary": "Accept, Accept-Encoding"}
        if "gzip" in request.headers.get("accept-encoding", ""):
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        return Response(200, body, content_type, headers)

    def alive(self) -> bool:
        """False when no cycle has started or finished for 3 intervals: a stuck loop."""
        marks = [m for m in (self.poller.cycle_started, self.poller.cycle_finished) if m is not None]
        last = max(marks) if marks else self.started
        return self.monotonic() - last <= STALE_INTERVALS * self.interval + 5

    def healthz(self, _: Request) -> Response:
        return text(200, "ok") if self.alive() else text(503, "poll loop stuck")

    def readyz(self, _: Request) -> Response:
        return text(200, "ready") if self.poller.snapshot.ready else text(503, "first sync not finished")

    def index(self, _: Request) -> Response:
        snap = self.poller.snapshot
        poll = snap.poll
        rows = [
            ("ready", "yes" if snap.ready else "no (first sync not finished)"),
            ("last poll", poll.result or "none yet"),
            ("API reachable", "yes" if poll.up else "no"),
            ("last poll finished", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(poll.finished_at))
             if poll.finished_at else "never"),
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
        return Response(200, page.encode(), "text/html; charset=utf-8")
