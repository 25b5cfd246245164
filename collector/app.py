"""Composition: settings in (through ``collector.wiring.wire``), a running collector (client, poller, endpoints,
scheduler) out.

``CollectorService`` starts and stops in-process, on the running event loop, so
``run``, ``demo``, ``check`` and the tests share one composition (the simulator
is wired in ``collector.simulator.service``).
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import structlog
from prometheus_client import CollectorRegistry, ProcessCollector

from collector.auth import WebConfig
from collector.cadence import Deadline
from collector.derive import ErrorClassifier
from collector.errors import CollectorError
from collector.listener import Listener, listen
from collector.llamacloud.client import ApiObserver, LlamaCloudClient
from collector.metrics import ProjectObserver, SelfMetrics, SnapshotCollector
from collector.poller import CycleReport, Poller
from collector.projects import Fleet, Watched, project_state_path
from collector.scheduler import start_scheduler
from collector.server import Endpoints
from collector.settings import Settings
from collector.state import MemoryStore, StateStore
from collector.wiring import ClientConfig, arguments, wire

if TYPE_CHECKING:
    from collector.otlp import Pusher

SHUTDOWN_GRACE = 5.0
WEB_CONFIG_CHECK = 5.0
"""Seconds between checks of the web config file and of the certificate, key and client CA files it names
(by content), outside the request path (a broken TLS context could otherwise keep every request, and so
every reload, out)."""
NEXT_PASS_SHARE = 0.25
"""A slot whose cycle ended a pass that spanned cycles starts the next pass at once, when at least this share
of a cycle's budget is left."""
FULL_COLLECTION_EVERY = 10


def plain_http_far(base_url: str) -> bool:
    """An ``http://`` base URL whose host is not a loopback address or name."""
    parts = urlsplit(base_url)
    if parts.scheme != "http":
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def settle_memory(cycles: int) -> None:
    """After a committed cycle, move what survived it out of the garbage collector's way.

    The state (10,000 sessions: hundreds of thousands of objects) lives across cycles; without
    this, every full collection walks all of it, which was 40% of an idle cycle's CPU (bench/).
    Frozen objects are still freed by reference counting; a full collection every
    ``FULL_COLLECTION_EVERY`` cycles reclaims any cycle of garbage among them.
    """
    if cycles % FULL_COLLECTION_EVERY == 0:
        gc.unfreeze()
        gc.collect()
    gc.freeze()


def make_client(
    config: ClientConfig,
    api_key: str,
    observer: ApiObserver | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    **injected: Any,
) -> LlamaCloudClient:
    """The client of ``config`` (it has no defaults of its own for what settings decide); ``injected`` are the
    seams tests replace (clock, sleep, rng, retry) or a bound they tighten."""
    return LlamaCloudClient(**{**arguments(config), "api_key": api_key, "transport": transport, "observer": observer, **injected})


def build_client(
    settings: Settings,
    api_key: str,
    observer: ApiObserver | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    **injected: Any,
) -> LlamaCloudClient:
    """The client of ``settings``, through ``wire``: for its first configured project, if any."""
    wiring = wire(settings)
    client = make_client(wiring.client, api_key, observer, transport, **injected)
    return client.for_project(wiring.projects.ids[0]) if wiring.projects.ids else client


class CollectorService:
    def __init__(
        self,
        settings: Settings,
        api_key: str,
        *,
        store: StateStore | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.wiring = wiring = wire(settings)
        self.log = structlog.get_logger("collector")
        self.registry = CollectorRegistry()
        self.self_metrics = SelfMetrics(self.registry)
        ProcessCollector(registry=self.registry)
        self.web = WebConfig(wiring.endpoints.web_config, refused=self.self_metrics.auth_refused)
        self.client = make_client(wiring.client, api_key, self.self_metrics, transport)
        if wiring.store is not None:  # only with a state file: sqlite3 costs 1 MB resident (issue 32)
            from collector.storage.sqlite import SqliteStore
        if store is None and wiring.store is not None:
            store = SqliteStore(**arguments(wiring.store))
            store.refuse_newer()  # a newer release's file: one line before anything starts (exit 2)
        classifier = ErrorClassifier(wiring.rules)

        def make(project_id: str | None, store: StateStore | None) -> Poller:
            """A project's poller: its client view, its store (its own file beside the state file, unless
            given), and its counts under its ID."""
            if store is None:
                store = (
                    MemoryStore()
                    if wiring.store is None or project_id is None
                    else SqliteStore(
                        **{**arguments(wiring.store), "path": project_state_path(wiring.store.path, project_id)},
                        project_id=project_id,
                    )
                )
            client = self.client if project_id is None else self.client.for_project(project_id)
            observer = ProjectObserver(self.self_metrics, project_id or "")
            return Poller(client, store, wiring.poll, classifier, observer, clock=clock, load=False)

        self.fleet = Fleet.build(wiring.projects, self.client, make, store or MemoryStore(), self._labelled)
        self.exposition = SnapshotCollector(lambda: self.fleet.snapshot, **arguments(wiring.exposition))
        self.registry.register(self.exposition)
        self.pusher: Pusher | None = None
        if wiring.otlp.endpoint is not None:  # the OpenTelemetry SDK is imported only to push: 4 MB less at rest
            from collector.otlp import Pusher, instance_id, resource

            where = resource(instance_id(wiring.endpoints.listen.rpartition(":")[2], wiring.exposition.shard))
            self.pusher = Pusher(wiring.otlp.endpoint, self.self_metrics.otlp_export, where)
        self.clock = clock
        self.server: Listener | None = None
        self.scheduler = None
        self._cycles = 0
        self._slot_ends: float | None = None
        """When this slot's cycles must end (monotonic): a cycle's budget from the slot's start."""
        self._cycle: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def poller(self) -> Poller:
        """The state file's own project's poller: the only one, unless several projects are watched."""
        return self.fleet.home.poller

    def _labelled(self, old: str | None, new: str | None) -> None:
        """A project's series come (``new``) or go (``old``): its self-metrics' known series with them."""
        if old is not None:
            self.self_metrics.forget_project(old)
        if new is not None:
            self.self_metrics.project(new)

    @property
    def port(self) -> int:
        assert self.server is not None, "started"
        return self.server.port

    async def run_cycle(self, budget: float | None = None) -> CycleReport:
        """One cycle of every watched project at once, as the scheduler runs them, then the memory settled; the
        home project's report."""
        reports = await self._projects(lambda watched: watched.poller.cycle(budget))
        return reports.get(id(self.fleet.home)) or CycleReport(result="failure")

    async def run_slot(self) -> None:
        """One scheduled slot: the projects listing, then every project's slot at once (``_project_slot``)."""
        self.fleet.begin_slot()
        self._slot_ends = time.monotonic() + self.poller.cadence.budget  # the listing's time comes out of it
        if self.fleet.needs_listing:  # which projects to poll, or the default's name: before the cycles
            await self._list_projects()
            await self._projects(self._project_slot)
        else:  # the projects' names alone: beside the cycles, never before them
            await asyncio.gather(self._list_projects(), self._projects(self._project_slot))

    async def _list_projects(self) -> None:
        try:  # within half a cycle
            await self.fleet.discover(Deadline.after(self.poller.cadence.budget / 2))
        except CollectorError:
            pass  # logged; the projects known so far go on

    async def _projects(self, run: Callable[[Watched], Awaitable[CycleReport]]) -> dict[int, CycleReport]:
        """``run`` for every active project at once (one that crashes is logged, never the others' end), each
        settled in the fleet, then the memory once."""
        await asyncio.to_thread(self.fleet.close_retired)
        watched = self.fleet.active()

        async def slot(project: Watched) -> CycleReport | None:
            if not project.poller.loaded:  # added since, or its file could not be read: in its own slot
                await asyncio.to_thread(self.fleet.load_project, project)
            return None if project.problem else await run(project)

        results = await asyncio.gather(*(slot(w) for w in watched), return_exceptions=True)
        reports: dict[int, CycleReport] = {}
        for project, result in zip(watched, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, BaseException):
                self.log.error(
                    "project's poll cycle crashed",
                    project_id=project.project_id,
                    error=f"{type(result).__name__}: {str(result)[:300]}",
                )
                self.fleet.settled(project, None)
                continue
            self.fleet.settled(project, result)
            if result is not None:
                reports[id(project)] = result
        self._cycles += 1
        settle_memory(self._cycles)
        self.push()
        return reports

    def push(self) -> None:
        """The committed snapshot over OTLP (``--otlp-endpoint``), in the background: each project's series start
        when its counts began (its state file says when, across restarts)."""
        if self.pusher is None:
            return
        fleet = self.fleet.snapshot
        starts = {w.label: w.poller.store.counting_since for w in self.fleet.active()}
        from collector.otlp import metrics_data

        self.pusher.push(metrics_data(self.exposition.chat(fleet), starts, self.clock(), self.pusher.resource))

    async def _project_slot(self, watched: Watched) -> CycleReport:
        """One project's slot: a cycle, and when it ended a pass that had spanned cycles with time to spare, the
        next pass at once in the rest of the slot. A pass longer than a cycle then runs back to back, and new
        runs wait about one pass, not two intervals (bench/lag.py: 100,000 sessions at a 65 s pass and
        --interval 60 waited up to 175 s)."""
        poller = watched.poller
        cadence, clock = poller.cadence, time.monotonic
        end = self._slot_ends or clock() + cadence.budget  # a slow projects listing never makes the slot overrun
        report = await poller.cycle(max(0.0, end - clock()))
        while report.pass_complete and report.pass_spanned and (left := end - clock()) >= cadence.budget * NEXT_PASS_SHARE:
            report = await poller.cycle(left)
        return report

    async def _job(self) -> None:
        self._cycle = asyncio.current_task()
        try:
            await self.run_slot()
        except asyncio.CancelledError:  # shutdown abandoned the cycle: nothing of it was committed
            self.log.info("poll cycle abandoned at shutdown; its work was not committed")
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the loop: one line, no dump
            self.log.error("poll cycle crashed", error=f"{type(exc).__name__}: {str(exc)[:300]}")
        finally:
            self._cycle = None

    async def start(self, schedule: bool = True) -> None:
        endpoints = Endpoints(self.registry, self.fleet, self.poller.cadence, self.web)
        address, base_url = self.wiring.endpoints.listen, self.wiring.client.base_url
        self.server = await listen(endpoints.app(), address, ssl_context=self.web.ssl_context)
        self.log.info(
            "collector started",
            listen=address,
            port=self.port,
            base_url=base_url,
            discover=self.wiring.poll.discover,
            interval=self.wiring.poll.interval,
            tls=self.web.ssl_context is not None,
        )
        if plain_http_far(base_url):
            self.log.warning(
                "base_url is plain http:// to a host that is not this machine: the API key goes out in clear; use https://",
                base_url=base_url,
            )
        self._watch = asyncio.create_task(self._watch_web_config())
        # a big state file loads in a thread: /healthz answers meanwhile, /readyz once it is in
        await asyncio.to_thread(self.fleet.load)
        if schedule:
            self.scheduler = start_scheduler(self._job, self.poller.cadence)

    async def _watch_web_config(self) -> None:
        """The web config and the certificate files it names, by content too: a rotated pair is served
        within one check, whatever the request traffic."""
        while True:
            await asyncio.sleep(WEB_CONFIG_CHECK)
            try:
                self.web.refresh(contents=True)
            except Exception as exc:  # noqa: BLE001 - a bug must not end the checks: one line, no dump
                self.log.error("web config check crashed", error=f"{type(exc).__name__}: {str(exc)[:300]}")

    def reload(self) -> None:
        """SIGHUP: re-read the web config now."""
        self.log.info("SIGHUP: re-reading the web config")
        self.web.refresh(force=True)

    async def stop(self) -> None:
        """Stop scheduling, give a running cycle a few seconds to commit, then abandon it safely."""
        if self._watch is not None:
            self._watch.cancel()
        if self.scheduler is not None:
            self.scheduler.pause()
        cycle = self._cycle
        if cycle is not None and not cycle.done():
            done, _ = await asyncio.wait({cycle}, timeout=SHUTDOWN_GRACE)
            if not done:
                cycle.cancel()  # its work is uncommitted: nothing half-counted survives
                await asyncio.wait({cycle}, timeout=SHUTDOWN_GRACE)
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        if self.server is not None:
            await self.server.close()
        if self.pusher is not None:
            await self.pusher.close()
        self.web.close()
        await self.client.aclose()
        for poller in self.fleet.pollers():
            poller.persist()
            poller.store.close()
        self.log.info("collector stopped")
