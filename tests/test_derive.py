"""Pure derivation from JSON fixtures: no network, no state."""

import dataclasses
import json
from pathlib import Path

import pytest

from collector.derive import OTHER_ERROR, ErrorClassifier, ToolCall, derive, history_intact
from collector.llamacloud.models import Session

pytestmark = pytest.mark.tier("unit")

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def session() -> Session:
    return Session.model_validate_json((FIXTURES / "session_mixed.json").read_bytes())


def test_each_stop_is_one_run_with_its_usage_tools_and_skips(session):
    result = derive(session.events, 0, 0, ErrorClassifier())
    first, second, third = result.runs
    assert (first.failed, first.error_type) == (False, None)
    assert (first.duration_seconds, first.input_tokens, first.output_tokens, first.turns) == (2.5, 1200, 150, 2)
    assert first.tool_calls == (ToolCall("search_index", True), ToolCall("calculator", False))
    assert first.skipped_index_ids == ("idx-b",)
    assert (second.failed, second.error_type, second.duration_seconds) == (True, "timeout", None)
    assert second.tool_calls == () and second.skipped_index_ids == ()
    assert (third.failed, third.error_type, third.input_tokens) == (True, OTHER_ERROR, None)


def test_unfinished_run_is_reported_not_counted(session):
    result = derive(session.events, 0, 0, ErrorClassifier())
    assert len(result.runs) == 3
    assert result.cursor == 14  # just past the third stop
    assert result.in_progress_start == 14
    assert result.events_seen == 16


def test_event_counts_keep_unknown_types_apart(session):
    counts = derive(session.events, 0, 0, ErrorClassifier()).event_counts
    assert counts == {
        "user_input": 4,
        "thinking_delta": 2,
        "thinking": 1,
        "tool_call": 2,
        "tool_result": 1,
        "text_delta": 1,
        "text": 1,
        "stop": 3,
        "_unknown": 1,
    }


def test_only_events_past_the_cursor_are_derived(session):
    full = derive(session.events, 0, 0, ErrorClassifier())
    first_two = derive(session.events[:12], 0, 0, ErrorClassifier())
    rest = derive(session.events, first_two.cursor, first_two.events_seen, ErrorClassifier())
    assert first_two.runs + rest.runs == full.runs
    merged = dict(first_two.event_counts)
    for kind, n in rest.event_counts.items():
        merged[kind] = merged.get(kind, 0) + n
    assert merged == full.event_counts


def test_no_stop_after_cursor_keeps_cursor_and_signature(session):
    result = derive(session.events, 14, 16, ErrorClassifier())
    assert result.runs == () and result.cursor == 14 and result.event_counts == {}
    assert result.stop_signature == derive(session.events, 0, 0, ErrorClassifier()).stop_signature


def test_history_check_detects_shrink_and_rewrite(session):
    events = session.events
    done = derive(events, 0, 0, ErrorClassifier())
    assert history_intact(events, done.cursor, done.events_seen, done.stop_signature)
    assert not history_intact(events[:10], done.cursor, done.events_seen, done.stop_signature)
    flipped = dataclasses.replace(events[13], is_error=False)
    rewritten = session.model_copy(update={"events": (*events[:13], flipped, *events[14:])})
    assert not history_intact(rewritten.events, done.cursor, done.events_seen, done.stop_signature)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("LLM request timed out after 60s", "timeout"),
        ("Deadline exceeded while waiting for the model", "timeout"),
        ("Provider answered 429 Too Many Requests", "rate_limit"),
        ("This model's maximum context length is 128000 tokens", "context_length"),
        ("Provider rejected the API key (401 Unauthorized)", "auth"),
        ("Index pipeline-7f3a does not exist", "not_found"),
        ("Tool 'sql_query' raised: syntax error near SELECT", "tool_error"),
        ("Upstream returned 502 Bad Gateway", "internal"),
        ("Run cancelled by user", OTHER_ERROR),
        (None, OTHER_ERROR),
    ],
)
def test_default_error_rules(text, expected):
    assert ErrorClassifier().classify(text) == expected


def test_rules_are_ordered_first_match_wins():
    classifier = ErrorClassifier([("mine", "tool"), ("timeout", "timed out")])
    assert classifier.classify("tool timed out") == "mine"


def test_stop_without_is_error_but_with_error_text_counts_as_failed():
    session = Session.model_validate(
        {
            "session_id": "s",
            "last_updated_at": "t",
            "events": [{"type": "user_input", "content": "x"}, {"type": "stop", "error": "boom", "usage": {}}],
        }
    )
    (run,) = derive(session.events, 0, 0, ErrorClassifier()).runs
    assert run.failed and run.error_type == OTHER_ERROR


def test_null_lists_and_unknown_fields_are_tolerated():
    data = json.loads((FIXTURES / "session_mixed.json").read_text())
    data.update(index_ids=None, events=None)
    session = Session.model_validate(data)
    assert session.index_ids == () and session.events == ()
