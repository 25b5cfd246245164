"""The simulator's payloads are real: the vendor's own SDK models accept them."""

import json

import pytest
from llama_cloud.types.chat_get_summary_response import ChatGetSummaryResponse
from llama_cloud.types.chat_list_response import ChatListResponse
from llama_cloud.types.chat_retrieve_response import ChatRetrieveResponse
from pydantic import TypeAdapter

from collector.simulator.api import Request, SimulatorApi
from collector.simulator.world import UNKNOWN_TYPE, World, populate
from tests.helpers import run_async

pytestmark = pytest.mark.tier("unit")

KEY = "k"


def get(api, path, **query):
    request = Request.of(path, {k: str(v) for k, v in query.items()}, {"authorization": f"Bearer {KEY}"})
    response = run_async(api(request))
    assert response.status == 200, response.body
    return json.loads(response.body)


@pytest.fixture(scope="module")
def api():
    world = populate(World(seed=21, error_rate=0.3), 60, 5, unfinished=3)
    return SimulatorApi(world, KEY)


def test_retrieve_payloads_validate_against_the_sdk(api):
    kinds: set[str] = set()
    for session_id in api.world.sessions:
        body = get(api, f"/api/v1/chat/{session_id}")
        known = [e for e in body["events"] if e["type"] != UNKNOWN_TYPE]
        model = ChatRetrieveResponse.model_validate({**body, "events": known}, strict=False)
        assert len(model.events) == len(known)
        kinds.update(e["type"] for e in body["events"])
        attachments = [e for e in body["events"] if e.get("image_attachment")]
        for event in attachments:
            assert set(event["image_attachment"]) == {"attachment_name", "source_id"}
    assert kinds >= {
        "user_input",
        "thinking_delta",
        "thinking",
        "text_delta",
        "text",
        "tool_call",
        "tool_result",
        "stop",
        UNKNOWN_TYPE,
    }


def test_list_and_summary_payloads_validate_and_page(api):
    seen, token = [], None
    while True:
        page = get(api, "/api/v1/chat", page_size=25, **({"page_token": token} if token else {}))
        items = TypeAdapter(list[ChatListResponse]).validate_python(page["items"])
        seen += [i.session_id for i in items]
        token = page["next_page_token"]
        if token is None:
            break
    assert seen == list(api.world.sessions) and len(seen) == 60
    summary = get(api, f"/api/v1/chat/{seen[0]}/summary")
    assert ChatGetSummaryResponse.model_validate(summary).session_id == seen[0]


def test_the_world_shows_what_a_real_project_shows(api):
    runs = api.world.runs
    assert any(r.failed for r in runs) and any(not r.failed for r in runs)
    assert len({r.error_type for r in runs if r.failed}) >= 5
    assert any(r.skipped_index_ids for r in runs)
    assert any(not ok for r in runs for _, ok in r.tool_calls)
    assert sum(1 for s in api.world.sessions.values() if s.pending) == 3
    assert any(s.index_ids is None for s in api.world.sessions.values())


def test_auth_and_unknown_paths():
    api = SimulatorApi(World(), KEY)
    bad = run_async(api(Request.of("/api/v1/chat", {}, {"authorization": "Bearer wrong"})))
    assert bad.status == 401
    missing = run_async(api(Request.of("/api/v1/chat/nope", {}, {"authorization": f"Bearer {KEY}"})))
    assert missing.status == 404


def test_several_projects_are_listed_as_the_sdk_reads_them_and_each_has_its_own_sessions():
    from llama_cloud.types.project_list_response import ProjectListResponse

    from collector.simulator.api import ORGANIZATION_ID, Fault, project_id

    default, other = populate(World(seed=3), 5, 2), populate(World(seed=4), 7, 2)
    api = SimulatorApi(default, KEY, others=(other,))
    projects = TypeAdapter(ProjectListResponse).validate_python(get(api, "/api/v1/projects", organization_id=ORGANIZATION_ID))
    assert [p.id for p in projects] == [project_id(0), project_id(1)]
    assert [p.is_default for p in projects] == [True, False] and {p.organization_id for p in projects} == {ORGANIZATION_ID}
    assert get(api, "/api/v1/projects", organization_id="another-org") == []
    listed = {
        pid: {s["session_id"] for s in get(api, "/api/v1/chat", project_id=pid, page_size=100)["items"]} for pid in api.projects
    }
    assert listed == {project_id(0): set(default.sessions), project_id(1): set(other.sessions)}
    assert {s["session_id"] for s in get(api, "/api/v1/chat", page_size=100)["items"]} == set(
        default.sessions
    )  # none: the default
    unknown = run_async(api(Request.of("/api/v1/chat", {"project_id": "nope"}, {"authorization": f"Bearer {KEY}"})))
    assert unknown.status == 404
    api.faults.add(Fault("status", "list", 503, project=project_id(1)))  # only that project's listing fails
    assert get(api, "/api/v1/chat", project_id=project_id(0))["items"]
    failed = run_async(api(Request.of("/api/v1/chat", {"project_id": project_id(1)}, {"authorization": f"Bearer {KEY}"})))
    assert failed.status == 503


def test_one_project_takes_any_project_id_as_before_projects():
    api = SimulatorApi(populate(World(seed=5), 3, 1), KEY)
    assert len(get(api, "/api/v1/chat", project_id="whatever", page_size=10)["items"]) == 3
