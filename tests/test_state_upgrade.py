"""State files across releases (DESIGN §4): every release's file loads with counters exact, nothing refetched
that did not change, and what this release writes reads back field for field.

The fixtures under tests/fixtures/state/ were written by the releases themselves with
scripts/state_fixture.py: the state file after a clean stop, the upstream it was written from, and what
that release exposed. docs/testing.md says how to add the fixture of each new release.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from packaging.version import Version
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.utils import floatToGoString

from collector.app import CollectorService
from collector.derive import ErrorClassifier
from collector.families import CHAT
from collector.metrics import SelfMetrics, SnapshotCollector
from collector.poller import Poller
from collector.settings import Settings, load_settings
from collector.state import one_project
from collector.storage.sqlite import SCHEMA_VERSION, SqliteStore
from collector.wiring import arguments, wire
from tests.fakes import FakeApi, poll_config, run_events
from tests.helpers import parse, run_async

pytestmark = pytest.mark.tier("unit")

FIXTURES = Path(__file__).parent / "fixtures" / "state"
RELEASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "state.db").is_file())


RENAMED_LABELS = {"llamacloud_chat_events_total": {"type": "event_type"}}
"""0.1.0's label names, as CHANGELOG.md lists them: the values are the contract, the names changed once."""
TOKEN_FAMILIES = (
    "llamacloud_chat_run_tokens",
    "llamacloud_chat_tokens_total",
    "llamacloud_chat_session_tokens_total",
    "llamacloud_chat_session_last_run_tokens",
)
GONE = ("llamacloud_chat_oldest_run_in_progress_seconds",)  # an age then; a timestamp now


def chat_samples(text: str) -> dict:
    out = {}
    for (name, labels), value in parse(text).items():
        if not name.startswith("llamacloud_chat_") or name in GONE:
            continue
        renames = RENAMED_LABELS.get(name, {"type": "token_type"} if name.startswith(TOKEN_FAMILIES) else {})
        # 0.2.0 writes bucket bounds as Go does (1.048576e+06, not 1048576.0): the same bound, as Prometheus 3 sees it
        out[(name, frozenset((renames.get(k, k), floatToGoString(float(v)) if k == "le" else v) for k, v in labels))] = value
    return out


def comparable(samples: dict, release: str) -> dict:
    """The samples a file of ``release`` determines: a family added since (its entry's ``since``) starts empty
    at the upgrade, and is checked to be."""
    added = {f.exposed for f in CHAT if Version(f.since) > Version(release)}
    out = {}
    for key, value in samples.items():
        base = re.sub(r"_(bucket|count|sum)$", "", key[0])
        if base in added:
            assert value == 0, f"{key[0]}: added since {release}, yet not empty at the upgrade"
        elif key[0].endswith("_total") and value == 0:
            continue  # a label value known in advance, shown at 0 (issue 29): the same as absent
        elif not key[0].startswith("llamacloud_chat_oldest_run_in_progress"):
            out[key] = value
    return out


def open_release(name: str, tmp_path: Path):
    shutil.copy(FIXTURES / name / "state.db", tmp_path / "state.db")
    api = FakeApi()
    for body in json.loads((FIXTURES / name / "upstream.json").read_text()):
        api.sessions[body["session_id"]] = body
    settings = load_settings({}, {})
    rules = [(r.type, r.pattern) for r in settings.error_rules]

    def start() -> Poller:
        store = SqliteStore(tmp_path / "state.db", settings.buckets.as_buckets(), rules, settings.label_value_limit)
        return Poller(
            api,
            store,
            poll_config(interval=60.0, buckets=settings.buckets.as_buckets()),
            ErrorClassifier(rules),
            SelfMetrics(CollectorRegistry()),
        )

    return api, start


def exposition(poller: Poller) -> str:
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: one_project(poller.snapshot), **arguments(wire(Settings()).exposition)))
    return generate_latest(registry).decode()


def test_every_release_has_a_fixture():
    assert "0.1.0" in RELEASES and len(RELEASES) >= 2


@pytest.mark.parametrize("release", RELEASES)
def test_a_release_file_loads_exactly_and_only_changed_sessions_are_fetched(release, tmp_path):
    api, start = open_release(release, tmp_path)
    poller = start()
    assert poller.state.synced and poller.snapshot.ready  # no resync: counters as the release left them
    expected = chat_samples((FIXTURES / release / "metrics.txt").read_text())
    assert comparable(chat_samples(exposition(poller)), release) == comparable(expected, release)
    report = run_async(poller.cycle())
    assert report.fetched == 0 and sum(api.retrieved.values()) == 0 and report.unchanged == len(api.sessions)
    assert comparable(chat_samples(exposition(poller)), release) == comparable(expected, release)
    sid = next(iter(api.sessions))
    body = api.sessions[sid]
    api.put(sid, "2030-01-01T00:00:00+00:00", body["events"] + run_events(failed=True))
    run_async(poller.cycle())
    assert dict(api.retrieved) == {sid: 1}
    runs = {k: v for k, v in chat_samples(exposition(poller)).items() if k[0] == "llamacloud_chat_runs_total"}
    assert (
        runs[("llamacloud_chat_runs_total", frozenset({("outcome", "error")}))]
        == expected[("llamacloud_chat_runs_total", frozenset({("outcome", "error")}))] + 1
    )
    poller.store.close()


@pytest.mark.parametrize("release", RELEASES)
def test_what_this_release_writes_reads_back_field_for_field(release, tmp_path):
    _api, start = open_release(release, tmp_path)
    first = start()
    run_async(first.cycle())
    first.store.close()
    again = start()
    assert again.state.sessions == first.state.sessions and again.state.retired == first.state.retired
    assert again.state.aggregates.to_dict() == first.state.aggregates.to_dict()
    assert again.state.synced and again.state.floor is None
    again.store.close()


@pytest.mark.parametrize("release", RELEASES)
def test_the_first_save_writes_every_row_by_field_name(release, tmp_path):
    """An older layout (0.1.0 stored a session as a JSON list) is converted whole on the first save."""
    _api, start = open_release(release, tmp_path)
    poller = start()
    run_async(poller.cycle())  # an idle cycle: nothing changed, yet the old rows are written anew
    poller.store.close()
    with sqlite3.connect(tmp_path / "state.db") as conn:
        rows = [json.loads(text) for table in ("sessions", "retired") for (text,) in conn.execute(f"SELECT state FROM {table}")]
        (schema,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert rows and all(isinstance(row, dict) for row in rows) and schema == str(SCHEMA_VERSION)


# -- several projects (issue 31): an earlier release's file belongs to the one project it watched ----------

PROJECT_A, PROJECT_B = "proj-a", "proj-b"
"""The organization of the upgrade: the file's project (the key's default) and another, with no sessions."""


def organization(api: FakeApi, asked: list[tuple[str, str]], default: str):
    """The API of ``api``'s sessions as project A's, over HTTP (``httpx.MockTransport``): the projects listing
    (``default`` the key's default project), A's listing and histories, and B's empty listing."""

    def handler(request: httpx.Request) -> httpx.Response:
        project = request.url.params.get("project_id", "")
        path = request.url.path
        asked.append((project, path))
        if path == "/api/v1/projects":
            listed = [{"id": p, "name": p[-1].upper(), "is_default": p == default} for p in (PROJECT_A, PROJECT_B)]
            return httpx.Response(200, json=listed)
        sessions = api.sessions if (project or default) == PROJECT_A else {}
        if path == "/api/v1/chat":
            items = [api._summary(sid) for sid in sessions]
            return httpx.Response(200, json={"items": items, "next_page_token": None})
        sid = path.rsplit("/", 1)[1]
        return httpx.Response(200, json=sessions[sid]) if sid in sessions else httpx.Response(404, json={})

    return httpx.MockTransport(handler)


MODES: dict[str, dict[str, Any]] = {
    "the default project": {},
    "--project-id": {"project_id": PROJECT_A},
    "--project-id, another after it": {"project_id": [PROJECT_A, PROJECT_B]},
    "--all-projects": {"all_projects": True},
    "--all-projects --project-id": {"all_projects": True, "project_id": PROJECT_A},
    "--all-projects --project-id, not the default": {"all_projects": True, "project_id": PROJECT_A},
    "--project-id, not the default": {"project_id": PROJECT_A},
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("release", RELEASES)
def test_a_release_file_is_its_project_s_in_every_mode_with_nothing_recounted(release, mode, tmp_path):
    api, _start = open_release(release, tmp_path)
    asked: list[tuple[str, str]] = []
    expected = comparable(chat_samples((FIXTURES / release / "metrics.txt").read_text()), release)

    async def scenario():
        settings = load_settings({"state_path": str(tmp_path / "state.db"), "listen": "127.0.0.1:0", **MODES[mode]}, {})
        default = PROJECT_B if "not the default" in mode else PROJECT_A
        collector = CollectorService(settings, "llx-key", transport=organization(api, asked, default))
        await collector.start(schedule=False)
        try:
            await collector.run_slot()
            text = generate_latest(collector.registry).decode()
        finally:
            await collector.stop()
        return text, collector.poller.store.project_id

    text, named = run_async(scenario())
    samples = parse(text, projects=True)
    of_a = [re.sub(f'project_id="{PROJECT_A}",?', "", line) for line in text.splitlines() if f'"{PROJECT_A}"' in line]
    assert comparable(chat_samples("\n".join(of_a) + "\n"), release) == expected
    assert not [p for p, path in asked if path.count("/") == 4], "nothing fetched: the file's counts are A's"
    assert named == PROJECT_A, "the file names its project from its first save"
    watched = {dict(labels).get("project_id") for (name, labels) in samples if name == "llamacloud_collector_up"}
    assert watched == ({PROJECT_A, PROJECT_B} if "another" in mode or "--all" in mode else {PROJECT_A})
