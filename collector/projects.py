"""Several projects (DESIGN §5): one poller per project, one client and one request budget for all of them.

Each watched project has its own poller, so its own listing pass, gone verdicts, first sync and state file:
a project whose listing fails fails on its own, as a session does one level down, and never holds back
the others. Their requests share the client (``LlamaCloudClient.for_project``): one connection pool, one
``--max-requests-per-second`` and one 429 pause, taken in turn, so a big project cannot starve a small one.

Which projects: the configured IDs (``--project-id``, repeated), every project of the organization
(``--all-projects``: the projects listing, read each slot), or the key's default project. The default is
named by the projects listing before its first count, so its series carry its ID like any other's.

The state file (``--state-path``) belongs to one project, the one it names (``Meta.project_id``). A file of
an earlier release names none: it belongs to the project that release watched, the configured one (the
first) or the key's default, and from its first save it names it. Every other project keeps its state
beside it, in ``<state file>.project-<digest of its ID>``.

A project is no longer watched once ``MISSED_LISTINGS`` projects listings in a row leave it out (one
listing is never trusted alone); a listing with none of the watched projects in it changes nothing unless
``BLANK_LISTINGS_AGREE`` agree. A project no longer watched is let go (its state saved in its file): one that
comes back starts from its file, and a listing that makes up new projects each time holds at most
``MAX_PROJECTS`` pollers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import structlog

from collector.cadence import Deadline
from collector.errors import ConfigError, FetchError, PayloadError
from collector.llamacloud.client import LlamaCloudClient
from collector.llamacloud.models import MAX_PROJECTS, Project
from collector.metrics import ProjectObserver
from collector.poller import CycleReport, Poller
from collector.state import FleetSnapshot, MemoryStore, ProjectSnapshot, StateStore

MISSED_LISTINGS = 2
"""Projects listings in a row that leave a watched project out before it is no longer watched."""
BLANK_LISTINGS_AGREE = 3
"""Projects listings in a row with none of the watched projects in them before they are taken at their word
(as three short listing passes are: a real mass deletion)."""
SETTLE_FAILURES = 3
"""Failed cycles in a row after which a project that never synced stops holding back ``/readyz``, when
another project has synced: it failed on its own."""
DISCOVERY_SECONDS = 30.0
NAMES_EVERY = 10
"""Slots between two projects listings asked only for the projects' names (no ``--all-projects``)."""
NO_DEFAULT = "projects: the listing names no default project; set --project-id (LLAMA_CLOUD_PROJECT_ID)"
MAX_DISCOVERY_BACKOFF = 8
"""Slots an optional projects listing waits at most after failures in a row (1, 2, 4, 8): a listing that keeps
failing, or a 429's pause it would renew, never sets the pace of the projects it lists."""
"""The projects listing's own deadline, whatever the cycle's."""


def project_state_path(path: Path, project_id: str) -> Path:
    """Where a project other than the state file's own keeps its state: beside it, named by a digest of its ID
    (an ID from the API is never a path)."""
    digest = hashlib.sha256(project_id.encode()).hexdigest()[:16]
    return path.with_name(f"{path.name}.project-{digest}")


@dataclass(frozen=True)
class ProjectsConfig:
    """Which projects to watch: ``ids`` (``--project-id``), ``all`` (``--all-projects``), else the default."""

    ids: tuple[str, ...]
    all: bool


@dataclass(eq=False)
class Watched:
    """One project the collector watches (or watched)."""

    project_id: str | None
    """None: the key's default project, until the projects listing names it."""
    poller: Poller
    name: str = ""
    active: bool = True
    missed: int = 0
    """Projects listings in a row that left it out."""
    failures: int = 0
    """Cycles in a row that failed."""
    problem: str = ""
    """Why it is not polled (a state file it cannot read), said once."""

    @property
    def label(self) -> str:
        return self.project_id or ""


@dataclass(eq=False)
class Fleet:
    """The watched projects and their pollers. ``make`` builds a project's poller (its client view, store and
    observer); ``home`` is the poller of the state file's own project, built first and loaded at start."""

    config: ProjectsConfig
    client: LlamaCloudClient
    make: Callable[[str | None, StateStore | None], Poller]
    """A project's poller: its ID (None: the default), and its store (None: its own beside the state file,
    or memory only)."""
    home: Watched
    on_label: Callable[[str | None, str | None], None] = lambda old, new: None
    """Told when a project's label comes or goes: ``(None, id)`` watched, ``(id, None)`` no longer, and
    ``("", id)`` the default named by the listing (``""``: its series before)."""
    projects: dict[str, Watched] = field(default_factory=dict)
    """Every project with an ID, watched or no longer."""
    discovered: bool = False
    """A projects listing has answered (needed before ``--all-projects`` is ready)."""
    retiring: list[Poller] = field(default_factory=list)
    """Pollers of projects no longer watched, to save and close (off the loop)."""
    blank_listings: int = 0
    """Projects listings in a row with none of the watched projects in them."""
    dormant: dict[str, Watched] = field(default_factory=dict)
    """Projects no longer watched whose counts live only in memory (no state file), oldest first: one that comes
    back resumes from them, and never counts from zero again (at most ``MAX_PROJECTS`` are kept)."""
    slot: int = 0
    """Slots begun (``begin_slot``), for the backoff of the projects listing."""
    just_failed: str | None = None
    """Why the slot's projects listing failed, which the home's cycle takes instead of asking again."""
    skip_until: int = 0
    """The slot before which an optional projects listing is not asked again (a failure backs off)."""
    failures_in_a_row: int = 0
    names_due: int = 0
    """The slot from which the listing is asked again for names alone (configured projects, the default named)."""
    was_ready: bool = False
    """Ready once: readiness stays (a project added later, or one that fails, never takes it back)."""
    said: set[str] = field(default_factory=set)
    """Warnings said once."""
    log: structlog.stdlib.BoundLogger = field(default_factory=lambda: structlog.get_logger("collector.projects"))
    _cached: tuple[tuple[object, ...], FleetSnapshot] | None = None

    @classmethod
    def build(
        cls,
        config: ProjectsConfig,
        client: LlamaCloudClient,
        make: Callable[[str | None, StateStore | None], Poller],
        home_store: StateStore,
        on_label: Callable[[str | None, str | None], None] = lambda old, new: None,
    ) -> Fleet:
        first = config.ids[0] if config.ids else None
        home = Watched(first, make(first, home_store))
        fleet = cls(config, client, make, home, on_label)
        home.poller.prepare = fleet._prepare_home
        if first is not None:
            fleet.projects[first] = home
        on_label(None, first or "")
        return fleet

    # -- start -----------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the home state file, then take the project it names; then the other configured projects'
        files (in a thread, off the loop). A file that names a project this configuration does not watch is a
        bad setting: counting another project's sessions as this one's would be silent and wrong."""
        poller = self.home.poller
        poller.load_state()
        named = getattr(poller.store, "project_id", "") or ""
        wanted = self.home.project_id
        if named and named != wanted:
            if self.config.ids and named not in self.config.ids:
                raise ConfigError(
                    f"state_path (--state-path, COLLECTOR_STATE_PATH): the file holds project {named}'s state, and "
                    f"project_id (--project-id, LLAMA_CLOUD_PROJECT_ID) names {', '.join(self.config.ids)}: add "
                    f"{named}, or give these projects another state file"
                )
            self.projects.pop(wanted or "", None)
            self.on_label(wanted or "", named)
            self.home.project_id = named
            self.projects[named] = self.home
        if named and not self.config.ids and not self.config.all:
            self.log.warning("the state file holds one project's state: watching it (no --project-id)", project_id=named)
        if self.home.project_id is not None:
            self._bind(self.home)
        for project_id in self.config.ids if not self.config.all else ():
            if project_id not in self.projects:
                self._add(project_id, "", strict=True)  # a configured project's refused file: exit 2, at start
                self.load_project(self.projects[project_id], strict=True)  # one that cannot open now: its own

    # -- the projects listing --------------------------------------------------------------------------

    async def _prepare_home(self, deadline: Deadline) -> None:
        """Before the home poller's cycle: the default project must be named first (its label)."""
        if self.home.project_id is None:
            if self.just_failed is not None:  # the slot asked already: once a slot
                why, self.just_failed = self.just_failed, None
                raise FetchError(why, operation="projects")
            try:
                await self.discover(deadline)
            finally:
                self.just_failed = None
            if self.home.project_id is None:
                raise FetchError(NO_DEFAULT, operation="projects")

    @property
    def needs_listing(self) -> bool:
        """The slot's listing decides what the cycles do: which projects (``--all-projects``), or the default's ID."""
        return self.config.all or self.home.project_id is None

    async def discover(self, deadline: Deadline | None = None) -> None:
        """Read the projects listing: names, the default project, and with ``--all-projects`` the projects added
        and removed. A failure is logged; without ``--all-projects`` and with every project named it changes
        nothing, and otherwise the projects known so far go on."""
        needed = self.home.project_id is None or (self.config.all and not self.discovered)
        self.just_failed = None
        if not needed and self.slot < self.skip_until:  # it failed lately: the projects known so far go on
            return
        if not needed and not self.config.all and self.slot < self.names_due:  # only names to learn: now and then
            return
        self.names_due = self.slot + NAMES_EVERY
        within = Deadline.after(DISCOVERY_SECONDS)
        if deadline is not None and deadline.remaining() < within.remaining():
            within = deadline
        try:
            listing = await self.client.list_projects(within)
        except (FetchError, PayloadError) as exc:
            self.just_failed = str(exc)[:200]
            self.failures_in_a_row += 1
            self.skip_until = self.slot + min(2**self.failures_in_a_row, MAX_DISCOVERY_BACKOFF)
            (self.log.warning if needed or self.config.all else self.log.debug)("projects listing failed", error=str(exc)[:200])
            if needed:
                raise
            return
        self.failures_in_a_row = 0
        if listing.unreadable:
            self.log.warning("projects listing: items left out as invalid", count=listing.unreadable)
        self.discovered = True
        self._take(listing.projects)

    def _take(self, listed: tuple[Project, ...]) -> None:
        by_id = {p.id: p for p in listed}
        if self.home.project_id is None and self.home.active:
            defaults = [p for p in listed if p.is_default] or (list(listed) if len(listed) == 1 else [])
            if defaults:
                self._name_home(defaults[0].id)
            else:  # the home's cycle takes this answer, not a second listing in the slot
                self.just_failed = NO_DEFAULT
        for project_id, project in by_id.items():
            watched = self.projects.get(project_id)
            if watched is not None:
                watched.name = project.name
        if not self.config.all:
            return
        if self.home.project_id is None and self.home.active:  # no default to give the state file to: unused
            self.home.active = False
            self.on_label("", None)
            self.log.warning("projects listing names no default project: the state file's sessions are not watched")
        watching = [w for w in self.projects.values() if w.active]
        blank = bool(watching) and not any(w.project_id in by_id for w in watching)
        self.blank_listings = self.blank_listings + 1 if blank else 0
        if blank and self.blank_listings < BLANK_LISTINGS_AGREE:
            self.log.warning("projects listing: none of the watched projects in it; nothing retired on its word")
        else:
            for watched in watching:
                watched.missed = 0 if watched.project_id in by_id else watched.missed + 1
                if watched.missed >= MISSED_LISTINGS:
                    self._retire(watched)
        new = sorted(p for p in by_id if p not in self.projects or not self.projects[p].active)
        room = MAX_PROJECTS - sum(1 for w in self.projects.values() if w.active)
        if len(new) > room:
            self._once("over", "projects listing: over the limit of projects; the rest left out", limit=MAX_PROJECTS)
            new = new[: max(0, room)]
        for project_id in new:
            watched = self.projects.get(project_id) or self.dormant.pop(project_id, None)
            if watched is not None:
                self.projects[project_id] = watched
                watched.active, watched.missed, watched.name = True, 0, by_id[project_id].name
                self.on_label(None, project_id)
                self.log.info("project listed again: watched", project_id=project_id)
            else:
                self._add(project_id, by_id[project_id].name)

    def _retire(self, watched: Watched) -> None:
        """No longer watched: its series go, and its poller (its state saved, in a thread: ``close_retired``),
        so a listing that makes up projects cannot grow memory. The home project's stays, with its file."""
        watched.active = False
        assert watched.project_id is not None
        self.on_label(watched.project_id, None)
        self.log.warning("project no longer listed: no longer watched", project_id=watched.project_id)
        if watched is self.home:
            return
        del self.projects[watched.project_id]
        if isinstance(watched.poller.store, MemoryStore):  # its counts are nowhere else: kept, bounded
            self.dormant[watched.project_id] = watched
            while len(self.dormant) > MAX_PROJECTS:
                self.dormant.pop(next(iter(self.dormant)))
        else:
            self.retiring.append(watched.poller)

    def _name_home(self, project_id: str) -> None:
        clash = self.projects.get(project_id)
        if clash is not None and clash is not self.home:  # it counts already: it goes on, the home file unused
            self.log.warning(
                "default project already watched on its own; the state file's sessions are not", project_id=project_id
            )
            self.home.active = False
            self.on_label("", None)
            return
        self.home.project_id = project_id
        self.projects[project_id] = self.home
        self._bind(self.home)
        self.on_label("", project_id)
        self.log.info("default project named by the projects listing", project_id=project_id)

    def _add(self, project_id: str, name: str, *, strict: bool = False) -> None:
        try:
            poller = self.make(project_id, None)
        except ConfigError as exc:
            if strict:
                raise
            self._once(
                f"refused {project_id}",
                "project not watched: its state file is refused",
                project_id=project_id,
                error=str(exc)[:300],
            )
            return
        watched = self.projects[project_id] = Watched(project_id, poller, name)
        self._bind(watched)
        self.on_label(None, project_id)
        self.log.info("project watched", project_id=project_id, name=name[:80])

    def _bind(self, watched: Watched) -> None:
        """Its ID, where the poller's requests, state file, counts and log lines carry it."""
        project_id = watched.project_id
        assert project_id is not None
        poller = watched.poller
        poller.log = structlog.get_logger("collector.poller", project_id=project_id)  # lazy: logging set up later holds
        poller.runs_log = structlog.get_logger("collector.runs", project_id=project_id)
        poller.store.project_id = project_id
        if isinstance(poller.client, LlamaCloudClient):
            poller.client = self.client.for_project(project_id)
        if isinstance(poller.metrics, ProjectObserver):
            poller.metrics.project_id = project_id

    # -- what runs and what shows ----------------------------------------------------------------------

    def active(self) -> list[Watched]:
        """The projects polled this slot: the home one first (the default, while unnamed, too)."""
        out = [self.home] if self.home.active else []
        return out + [w for w in self.projects.values() if w.active and w is not self.home]

    def close_retired(self) -> None:
        """Save and close the state of projects no longer watched (in a thread); a file of one that never counted
        goes with it."""
        while self.retiring:
            poller = self.retiring.pop()
            try:
                poller.persist()
                poller.store.close()
                path = getattr(poller.store, "path", None)
                if not poller.state.synced and isinstance(path, Path):  # it never counted: nothing worth a file
                    for leftover in (path, *(path.with_name(path.name + end) for end in ("-wal", "-shm"))):
                        leftover.unlink(missing_ok=True)
            except Exception as exc:  # noqa: BLE001 - one project's file never stops the others
                self.log.error("state of a project no longer watched not saved", error=f"{type(exc).__name__}: {str(exc)[:200]}")

    def load_project(self, watched: Watched, *, strict: bool = False) -> None:
        """Read a project's state file (in a thread, in that project's own slot: a locked file waits SQLite's busy
        timeout there, holding back no other project). A file that cannot be read now is that project's failure:
        it shows up 0 and is read again next slot."""
        try:
            watched.poller.load_state()
        except ConfigError:
            if strict:
                raise  # a configured project's file of a newer release, or of another project: exit 2 at start
            watched.problem = watched.problem or "refused"  # never read, never written: said once below
            self._once(
                f"refused {watched.project_id}", "project not watched: its state file is refused", project_id=watched.project_id
            )
        except Exception as exc:  # noqa: BLE001 - one project's file never stops the others
            if not watched.problem:
                self.log.error(
                    "project's state file not read; retried next slot",
                    project_id=watched.project_id,
                    error=f"{type(exc).__name__}: {str(exc)[:300]}",
                )
            watched.problem = str(exc)[:300] or type(exc).__name__
        else:
            watched.problem = ""

    def settled(self, watched: Watched, report: CycleReport | None) -> None:
        """A cycle of ``watched`` ended (None: it crashed, or its state could not be read): count the failures in
        a row."""
        watched.failures = watched.failures + 1 if report is None or report.result == "failure" else 0

    @property
    def snapshot(self) -> FleetSnapshot:
        """Every active project's latest snapshot, rebuilt only when one of them changed (the scrape cache
        renders once per snapshot)."""
        shown = self.active()  # one whose state file is not read yet shows too: up 0, nothing counted
        # by identity: a snapshot's own == would compare every session (the cache holds them, so ids stay theirs)
        key = (
            self.discovered,
            *((w.label, w.name, w.failures >= SETTLE_FAILURES, bool(w.problem), id(w.poller.snapshot)) for w in shown),
        )
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        snaps = tuple(
            ProjectSnapshot(w.label, w.name or w.label, w.poller.snapshot if w.label else replace(w.poller.snapshot, ready=False))
            for w in shown  # an unnamed project counts nothing yet in the open: no series without project_id
        )
        synced = any(p.snapshot.ready for p in snaps)
        each = all(
            p.snapshot.ready or ((w.failures >= SETTLE_FAILURES or w.problem) and synced)
            for p, w in zip(snaps, shown, strict=True)
        )
        ready = self.was_ready or (bool(snaps) and each and (self.discovered or not self.config.all))
        self.was_ready = ready
        fleet = FleetSnapshot(snaps, ready)
        self._cached = (key, fleet)
        return fleet

    def begin_slot(self) -> None:
        self.slot += 1

    def _once(self, key: str, message: str, **fields: object) -> None:
        if key not in self.said and len(self.said) < 10_000:
            self.said.add(key)
            self.log.warning(message, **fields)

    def pollers(self) -> Iterable[Poller]:
        """Every poller the fleet holds: watched, the home one, and those let go but not yet closed."""
        yield from self.retiring
        seen = {id(self.home)}
        yield self.home.poller
        for watched in self.projects.values():
            if id(watched) not in seen:
                seen.add(id(watched))
                yield watched.poller

    @property
    def loaded_at(self) -> float | None:
        return self.home.poller.loaded_at

    @property
    def cycle_started(self) -> float | None:
        return max((p.cycle_started for p in self.pollers() if p.cycle_started is not None), default=None)

    @property
    def cycle_finished(self) -> float | None:
        return max((p.cycle_finished for p in self.pollers() if p.cycle_finished is not None), default=None)
