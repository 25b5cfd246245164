"""Payload models: tolerant parsing, and the lean path for large histories."""

import json
from typing import Any

import pytest

from collector.derive import ErrorClassifier, derive
from collector.llamacloud import models
from collector.llamacloud.models import Session, lean_json, parse_session
from collector.simulator.world import World

pytestmark = pytest.mark.tier("unit")


def test_lean_json_drops_only_unread_texts():
    tricky: dict[str, Any] = {
        "session_id": "s",
        "last_updated_at": "t",
        "generated_title": 'say "content": "x"',
        "events": [
            {"type": "user_input", "content": 'quote \\" and "content":"fake" inside'},
            {"type": "tool_call", "name": "n", "call_id": "c1", "arguments": {"content": "kept, not a string key"}},
            {"type": "tool_result", "name": "n", "call_id": "c1", "result": {"rows": [1, 2]}},
            {"type": "tool_result", "name": "n", "call_id": "c2", "result": "long text " * 1000},
            {"type": "stop", "is_error": True, "error": "boom", "usage": {"turns": 2}},
        ],
    }
    body = json.dumps(tricky).encode() + b" " * models.LEAN_THRESHOLD
    lean = lean_json(body)
    assert len(lean) < len(body) - 9000
    parsed = json.loads(lean)
    assert parsed["generated_title"] == tricky["generated_title"]
    assert [e["type"] for e in parsed["events"]] == [e["type"] for e in tricky["events"]]
    assert parsed["events"][0]["content"] == "" and parsed["events"][3]["result"] == ""
    assert parsed["events"][2]["result"] == {"rows": [1, 2]}
    assert parsed["events"][4]["error"] == "boom"


def test_large_bodies_parse_to_the_same_session():
    world = World(seed=3)
    session = world.new_session()
    world.grow_to(session, 20_000, 300)
    world.add_unknown_event(session.session_id)
    body = session.detail_bytes()
    assert len(body) > models.LEAN_THRESHOLD
    full = Session.model_validate_json(body)
    streamed = parse_session(body)
    assert streamed == full and len(streamed.events) == len(session.events)
    classifier = ErrorClassifier()
    assert derive(full.events, 0, 0, classifier) == derive(streamed.events, 0, 0, classifier)


def test_large_bad_bodies_raise_value_errors():
    import pytest

    pad = b" " * models.LEAN_THRESHOLD
    for body in (
        b'{"session_id": "s", "last_updated_at": "t", "events": [{"type": "text"}, {"type": ' + pad,
        b'{"session_id": "s", "last_updated_at": "t", "events": [{"type": "stop", "is_error": "x"}]}' + pad,
        b'{"last_updated_at": "t", "events": []}' + pad,
    ):
        with pytest.raises(ValueError):
            parse_session(body)


def test_small_bodies_pass_through_untouched():
    body = b'{"content": "x"}'
    assert lean_json(body) is body


def test_odd_events_do_not_fail_the_session():
    session = Session.model_validate(
        {
            "session_id": "s",
            "last_updated_at": "t",
            "events": [{"type": None}, {"no_type": 1}, {"type": "stop", "usage": None, "skipped_index_ids": None}],
        }
    )
    assert [models.event_label(e) for e in session.events] == ["_unknown", "_unknown", "stop"]
    assert Session.model_validate_json(b'{"session_id":"a","last_updated_at":"x","events":null}').events == ()


def test_a_json_boolean_is_never_a_measure():
    from collector.llamacloud.models import INVALID, JobMetadata, refused

    session = parse_session(
        json.dumps(
            {
                "session_id": "s",
                "last_updated_at": "t",
                "job_metadata": {"duration_ms": True, "total_input_tokens": False, "turns": 3},
                "events": [
                    {"type": "user_input"},
                    {"type": "stop", "is_error": False, "usage": {"duration_ms": True, "total_output_tokens": 7}},
                ],
            }
        ).encode()
    )
    job = session.job_metadata
    assert isinstance(job, JobMetadata) and job.duration_ms is INVALID and job.total_input_tokens is INVALID
    assert job.turns == 3 and refused(job) == ("duration_ms", "total_input_tokens")
    (run,) = derive(session.events, 0, 0, ErrorClassifier()).runs
    assert run.duration_seconds is None and run.output_tokens == 7 and run.refused == ("duration_ms",)


def test_an_event_whose_type_is_not_a_string_is_an_unknown_event():
    from collector.llamacloud.models import UnknownEvent, parse_session

    body = {
        "session_id": "s",
        "last_updated_at": "2026-01-01T00:00:00Z",
        "events": [{"type": ["stop"]}, {"type": {"a": 1}}, {"type": "stop", "is_error": False}],
    }
    events = parse_session(json.dumps(body).encode()).events
    assert [type(e) for e in events[:2]] == [UnknownEvent, UnknownEvent] and len(events) == 3
