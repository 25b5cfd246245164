"""A model of an organization, checked by hypothesis against the real service (issue 31): projects added,
removed and brought back, listings refused, runs arriving, restarts with the state files. Every slot drives
``CollectorService.run_slot`` over HTTP (``httpx.MockTransport``): the real fleet, pollers, client and stores.

Invariants, after every slot: a project that answers is exact (its runs equal its truth, under its own
``project_id``); a project whose listing is refused never shows more than its truth; a project is watched
only while the organization lists it (two listings in a row without it let it go); no series without a
``project_id`` once every project is named; ``/readyz`` follows the projects that synced.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from prometheus_client import generate_latest

from collector.app import CollectorService
from collector.settings import load_settings
from tests.fakes import run_events
from tests.helpers import parse

pytestmark = pytest.mark.tier("unit")

NAMES = ("p0", "p1", "p2", "p3")
"""The projects the organization may have; ``p0`` is the key's default."""


class Organization:
    """The API: projects, each with its sessions (``{sid: (last_updated_at, runs)}``), and refused listings."""

    def __init__(self) -> None:
        self.projects: dict[str, dict[str, tuple[int, list[bool]]]] = {}
        self.refused: set[str] = set()
        self.hidden: dict[str, dict[str, tuple[int, list[bool]]]] = {}
        """Projects the listing leaves out, and their sessions: back, they have them again."""
        self.clock = 0

    def touch(self, project: str, sid: str, failed: bool) -> None:
        self.clock += 1
        _, runs = self.projects[project].get(sid, (0, []))
        self.projects[project][sid] = (self.clock, [*runs, failed])

    def handler(self, request: httpx.Request) -> httpx.Response:
        path, project = request.url.path, request.url.params.get("project_id") or "p0"
        if path == "/api/v1/projects":
            return httpx.Response(200, json=[{"id": p, "name": p.upper(), "is_default": p == "p0"} for p in self.projects])
        if project not in self.projects:
            return httpx.Response(404, json={"detail": "Project not found"})
        sessions = self.projects[project]
        if path == "/api/v1/chat":
            if project in self.refused:
                return httpx.Response(403, json={"detail": "forbidden"})
            items = [{"session_id": s, "last_updated_at": stamp(t)} for s, (t, _) in sessions.items()]
            return httpx.Response(200, json={"items": items, "next_page_token": None})
        sid = path.rsplit("/", 1)[1]
        if sid not in sessions:
            return httpx.Response(404, json={})
        t, runs = sessions[sid]
        events = [e for failed in runs for e in run_events(failed=failed)]
        return httpx.Response(200, json={"session_id": sid, "last_updated_at": stamp(t), "events": events})


def stamp(t: int) -> str:
    return f"2026-01-01T00:{t // 60 % 60:02d}:{t % 60:02d}+00:00"


class OrganizationModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp())
        self.org = Organization()
        self.loop = asyncio.new_event_loop()
        self.collector: CollectorService | None = None
        self.missing: dict[str, int] = {}
        """Listings in a row that left a watched project out."""
        self.watched: set[str] = set()

    @initialize(state=st.booleans())
    def start(self, state: bool) -> None:
        self.org.projects["p0"] = {}
        self.org.touch("p0", "s0", False)
        self.state = state
        self._start()

    def _start(self) -> None:
        flags = {"listen": "127.0.0.1:0", "all_projects": True, "interval": 30.0}
        if self.state:
            flags["state_path"] = str(self.folder / "state.db")
        self.collector = CollectorService(load_settings(flags, {}), "llx-key", transport=httpx.MockTransport(self.org.handler))
        self.loop.run_until_complete(self.collector.start(schedule=False))

    def teardown(self) -> None:
        if self.collector is not None:
            self.loop.run_until_complete(self.collector.stop())
        self.loop.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- what the organization does ------------------------------------------------------------------

    @rule(project=st.sampled_from(NAMES[1:]))
    def add_project(self, project: str) -> None:
        self.org.projects.setdefault(project, self.org.hidden.pop(project, {}))

    @precondition(lambda self: len(self.org.projects) > 1)
    @rule(data=st.data())
    def remove_project(self, data: st.DataObject) -> None:
        project = data.draw(st.sampled_from(sorted(p for p in self.org.projects if p != "p0")))
        self.org.hidden[project] = self.org.projects.pop(project)  # not listed, and not found

    @rule(project=st.sampled_from(NAMES), session=st.sampled_from(("s0", "s1", "s2")), failed=st.booleans())
    def run(self, project: str, session: str, failed: bool) -> None:
        if project in self.org.projects:
            self.org.touch(project, session, failed)

    @rule(project=st.sampled_from(NAMES), refused=st.booleans())
    def refuse_listing(self, project: str, refused: bool) -> None:
        (self.org.refused.add if refused else self.org.refused.discard)(project)

    @rule()
    def restart(self) -> None:
        assert self.collector is not None
        self.loop.run_until_complete(self.collector.stop())
        self._start()

    @rule()
    def slot(self) -> None:
        assert self.collector is not None
        listed = set(self.org.projects)
        self.loop.run_until_complete(self.collector.run_slot())
        for project in list(self.watched):
            self.missing[project] = 0 if project in listed else self.missing.get(project, 0) + 1
            if self.missing[project] >= 2:
                self.watched.discard(project)
        self.watched |= listed
        self.check()

    # -- what must hold ------------------------------------------------------------------------------

    def check(self) -> None:
        assert self.collector is not None
        samples = parse(generate_latest(self.collector.registry).decode(), projects=True)
        runs: dict[str, dict[str, float]] = {}
        per_session: dict[str, dict[str, float]] = {}
        for (name, labels), value in samples.items():
            if name == "llamacloud_chat_runs_total":
                label = dict(labels)
                runs.setdefault(label["project_id"], {})[label["outcome"]] = value
            if name == "llamacloud_chat_session_runs_total":
                label = dict(labels)
                into = per_session.setdefault(label["project_id"], {"success": 0, "error": 0})
                into[label["outcome"]] += value
            if name.startswith("llamacloud_chat_"):
                assert "project_id" in dict(labels), f"{name} without project_id"
        up = {dict(labels).get("project_id") for (name, labels) in samples if name == "llamacloud_collector_up"}
        assert up <= self.watched | set(self.org.projects), up
        for project, sessions in self.org.projects.items():
            truth = {"success": 0, "error": 0}
            for _, outcomes in sessions.values():
                for failed in outcomes:
                    truth["error" if failed else "success"] += 1
            got = runs.get(project)
            if project in self.org.refused:
                assert got is None or all(got[k] <= truth[k] for k in truth), (project, got, truth)
            elif project in self.watched:
                assert got == truth, (project, got, truth)
                assert per_session.get(project) == (truth if sessions else None), (project, per_session, truth)

    @invariant()
    def never_more_than_the_truth(self) -> None:
        if self.collector is None:
            return
        samples = parse(generate_latest(self.collector.registry).decode(), projects=True)
        for (name, labels), value in samples.items():
            if name == "llamacloud_chat_runs_total":
                label = dict(labels)
                project = label["project_id"]
                if project in self.org.projects:
                    truth = sum(
                        1
                        for _, outcomes in self.org.projects[project].values()
                        for failed in outcomes
                        if failed == (label["outcome"] == "error")
                    )
                    assert value <= truth, (project, label["outcome"], value, truth)


OrganizationModel.TestCase.settings = settings(
    max_examples=25, stateful_step_count=20, deadline=None, suppress_health_check=list(HealthCheck)
)
test_an_organization_model = OrganizationModel.TestCase
