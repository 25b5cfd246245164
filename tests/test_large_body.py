"""Issue 26, item 6: a body over 1 MiB (``LEAN_THRESHOLD``) is read by its top-level ``events`` key, as a small
one is (DESIGN §4 "A body's history is its top-level ``events`` key, whatever the body's size"); and item 4's
bound on ``last_updated_at`` (``MAX_TIMESTAMP_TEXT``), which the listing and a retrieve answer both apply.

The oracle is the small path itself: for any body, ``parse_session`` gives what ``Session.model_validate_json``
gives, or both refuse it."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from collector.app import build_client
from collector.derive import ErrorClassifier, derive
from collector.errors import PayloadError
from collector.llamacloud import models
from collector.llamacloud.models import (
    LEAN_THRESHOLD,
    MAX_TIMESTAMP_TEXT,
    Session,
    Summary,
    parse_page,
    parse_session,
)
from collector.metrics import SelfMetrics
from collector.settings import Settings
from tests.fakes import run_events
from tests.helpers import run_async

pytestmark = pytest.mark.tier("unit")

T0 = "2026-01-01T00:00:00+00:00"
FILLER = "x" * (LEAN_THRESHOLD + 4096)


def outcome(parse, body: bytes) -> tuple:
    """What a parse gives: the fields derivation reads and the whole model, or only that it refused."""
    try:
        session = parse(body)
    except (ValueError, TypeError) as exc:  # TypeError: an unhashable event type, on both paths alike
        return ("refused", isinstance(exc, TypeError))
    return (session.session_id, session.last_updated_at, session.events, session)


def assert_same(body: bytes) -> tuple:
    assert len(body) >= LEAN_THRESHOLD  # else both calls take the small path and the test proves nothing
    small = outcome(Session.model_validate_json, body)
    assert outcome(parse_session, body) == small
    return small


def runs(session: Session) -> int:
    return len(derive(session.events, 0, 0, ErrorClassifier()).runs)


def body_of(*pairs: tuple[str, object], raw: dict[str, str] | None = None) -> bytes:
    """A JSON object of ``pairs`` in this order (duplicate keys allowed); ``raw`` values are JSON text as is."""
    raw = raw or {}
    return ("{" + ",".join(json.dumps(key) + ":" + raw.get(key, json.dumps(value)) for key, value in pairs) + "}").encode(
        "utf-8", "surrogatepass"
    )


# The two answers --------------------------------------------------------------------------------------


def test_the_same_five_runs_after_an_unknown_field_with_an_empty_events_are_five_runs_at_1_1_mb():
    history = run_events() * 5
    small = body_of(("session_id", "s"), ("last_updated_at", T0), ("debug", {"events": []}), ("events", history))
    assert runs(parse_session(small)) == 5
    large = body_of(
        ("session_id", "s"),
        ("last_updated_at", T0),
        ("debug", {"events": []}),
        ("events", history),
        ("padding", "p" * (1_100_000)),
    )
    assert len(large) > 1_100_000
    session = parse_session(large)
    assert runs(session) == 5 and session == Session.model_validate_json(large)


def test_fifty_runs_after_a_leading_debug_events_are_fifty_runs_not_the_debug_ones():
    decoy = run_events(failed=True) * 3
    body = body_of(
        ("debug", {"events": decoy}),
        ("session_id", "s"),
        ("last_updated_at", T0),
        ("events", run_events(tool="search") * 50),
        ("padding", FILLER),
    )
    session = parse_session(body)
    assert runs(session) == 50 and session.events == Session.model_validate_json(body).events
    failed = sum(run.failed for run in derive(session.events, 0, 0, ErrorClassifier()).runs)
    assert failed == 0


def test_a_text_or_a_key_that_reads_like_events_is_not_the_history():
    history = run_events() * 4
    for decoy in (
        ("note", 'see "events": [{"type": "stop"}] here'),  # a string value
        ('a"events', [{"type": "stop"}]),  # a key that ends with "events": its JSON has "events": [
        ("content", '"events": ['),  # a text lean_json blanks
        ("events_of_another", [{"type": "stop"}]),
    ):
        body = body_of(("session_id", "s"), decoy, ("last_updated_at", T0), ("events", history), ("pad", FILLER))
        assert runs(assert_same(body)[3]) == 4


# Cases at the edge of the JSON grammar, where the stdlib decoder and pydantic's parser differ ------------------

PAD = json.dumps("f" * (LEAN_THRESHOLD + 16))
HEAD = '{"session_id":"s","last_updated_at":"t","pad":' + PAD + ","


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


EDGES = {
    "duplicate events: the last wins": HEAD + '"events":[{"type":"text"}],"events":[{"type":"stop"}]}',
    "duplicate events: the first, replaced, is not validated": HEAD
    + '"events":[{"type":"stop","is_error":"x"}],"events":[{"type":"stop"}]}',
    "duplicate events: the last is": HEAD + '"events":[{"type":"stop"}],"events":[{"type":"stop","is_error":"x"}]}',
    "duplicate events: a later null replaces an array": HEAD + '"events":[{"type":"stop"}],"events":null}',
    "duplicate events: a later array replaces a number": HEAD + '"events":5,"events":[{"type":"stop"}]}',
    "an escaped events key": HEAD + '"ev\\u0065nts":[{"type":"stop"}]}',
    "events is an object": HEAD + '"events":{"events":[{"type":"stop"}]}}',
    "events inside a string inside events": HEAD + '"events":[{"type":"text","x":"\\"events\\": ["}]}',
    "a lone surrogate in a content text": HEAD + '"events":[{"type":"text","content":"\\ud800"}]}',
    "a lone low surrogate in a result text": HEAD + '"events":[{"type":"tool_result","call_id":"c","result":"a\\udc00"}]}',
    "a surrogate pair in a content text": HEAD + '"events":[{"type":"text","content":"\\ud83d\\ude00"}]}',
    "a lone surrogate in an event's error": HEAD + '"events":[{"type":"stop","error":"\\ud800"}]}',
    "a lone surrogate in an unknown field": '{"x":"\\udbff",' + HEAD[1:] + '"events":[]}',
    "a control character in a content text": HEAD + '"events":[{"type":"text","content":"a\x01b"}]}',
    "a bad escape in a content text": HEAD + '"events":[{"type":"text","content":"a\\qb"}]}',
    "a form feed before a content key's colon": HEAD + '"events":[{"type":"text","content"\x0c:"x"}]}',
    "a vertical tab between events": HEAD + '"events":[{"type":"text"},\x0b{"type":"text"}]}',
    "two events without a comma": HEAD + '"events":[{"type":"text"} {"type":"text"}]}',
    "two commas between events": HEAD + '"events":[{"type":"text"},,{"type":"text"}]}',
    "a letter where a comma belongs": HEAD + '"events":[{"type":"text"}x{"type":"text"}]}',
    "a bracket where a comma belongs": HEAD + '"events":[{"type":"text"}]{"type":"text"}]}',
    "a trailing comma in events": HEAD + '"events":[{"type":"text"},]}',
    "a trailing comma in the object": HEAD + '"events":[],}',
    "an unterminated events": HEAD + '"events":[{"type":"text"},{"type":',
    "data after the object": HEAD + '"events":[]} x',
    "whitespace after the object": HEAD + '"events":[]} \n\t\r',
    "a byte order mark": "\ufeff" + HEAD + '"events":[]}',
    "not an object": "[" + PAD + "]",
    "NaN and Infinity": HEAD + '"x":NaN,"events":[{"type":"stop","usage":{"turns":-Infinity,"duration_ms":1e400}}]}',
    "a 4300-digit negative number": HEAD + '"events":[{"type":"x","n":-' + "9" * 4300 + "}]}",
    "a 4301-digit number": HEAD + '"events":[{"type":"x","n":' + "9" * 4301 + "}]}",
    "a float of 5000 digits": HEAD + '"x":1.' + "5" * 5000 + ',"events":[]}',
    "an unhashable event type": HEAD + '"events":[{"type":[1]}]}',
    # around pydantic's nesting limit (about 200 levels), which the stdlib decoder does not have
    **{f"nesting {d} deep in an event": HEAD + '"events":[{"type":"x","a":' + deep(d) + "}]}" for d in range(194, 204)},
    **{f"nesting {d} deep in a field": HEAD + '"x":' + deep(d) + ',"events":[]}' for d in range(196, 206)},
    "nesting far past the stdlib's limit": HEAD + '"x":' + deep(5000) + ',"events":[]}',
}


@pytest.mark.parametrize("text", EDGES.values(), ids=EDGES.keys())
def test_edges_of_the_grammar_give_what_the_small_path_gives(text):
    for body in (text.encode("utf-8", "surrogatepass"), text.encode("utf-8", "surrogatepass").replace(b",", b" ,\n ")):
        with mock.patch.object(models, "EVENTS_CHUNK", 1):
            assert_same(body)
        assert_same(body)


def test_bytes_that_are_not_utf8_are_refused_even_in_a_text_that_is_blanked():
    for bad in (b"\xff", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80"):
        body = HEAD.encode() + b'"events":[{"type":"text","content":"a' + bad + b'b"}]}'
        assert assert_same(body) == ("refused", False)


def test_a_chunked_history_is_the_whole_history():
    history = [*run_events(tool="t"), {"type": "mystery", "n": 1}] * 300
    body = body_of(("session_id", "s"), ("last_updated_at", T0), ("events", history), ("pad", FILLER))
    for chunk in (1, 2, 7, 100, 1 << 16):
        with mock.patch.object(models, "EVENTS_CHUNK", chunk):
            assert runs(assert_same(body)[3]) == 300


# The property: any body -------------------------------------------------------------------------------------
# Most bodies are valid, so that the events compare; one in four is "wild" (any value where the API sends a known
# one, a field missing, a lone surrogate, a character inserted or deleted anywhere), where mostly both refuse.

TRICKY_TEXTS = st.sampled_from(
    [
        '"events": [',
        '"events":[{"type":"stop"}]',
        '"content": "x"',
        '\\"content\\":',
        '"',
        "\\",
        "]}",
        '"result":"',
        "\x01",
        "é",
        "\U0001f600",
    ]
)
TEXTS = st.text(max_size=6) | TRICKY_TEXTS
KEYS = st.sampled_from(["events", "content", "result", "type", "debug", "x", 'x"events', 'x"content', "Events"]) | TEXTS
SCALARS = st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False) | TEXTS
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3), max_leaves=6)
STRINGS = st.text(max_size=5)


def events(wild: bool) -> st.SearchStrategy[list]:
    measures: st.SearchStrategy[Any] = st.integers(0, 2**53) | st.none()
    flags = st.none() | st.booleans()
    if wild:
        measures = measures | st.integers(-1, 2**64) | st.floats(allow_nan=False) | st.booleans() | TEXTS
        flags = flags | st.sampled_from([0, 1, 0.0, 1.0, "true", "no", 2, "x", []])
    known = st.one_of(
        st.fixed_dictionaries({"type": st.sampled_from(sorted(models.PLAIN_EVENT_TYPES))}, optional={"content": TEXTS | VALUES}),
        st.fixed_dictionaries({"type": st.just("tool_call"), "name": TEXTS, "call_id": STRINGS}, optional={"arguments": VALUES}),
        st.fixed_dictionaries(
            {"type": st.just("tool_result"), "call_id": STRINGS}, optional={"name": st.none() | STRINGS, "result": TEXTS | VALUES}
        ),
        st.fixed_dictionaries(
            {"type": st.just("stop")},
            optional={
                "is_error": flags,
                "error": st.none() | TEXTS,
                "skipped_index_ids": st.none() | st.lists(STRINGS, max_size=2),
                "usage": st.none() | st.fixed_dictionaries({}, optional={"turns": measures, "duration_ms": measures}),
            },
        ),
        st.fixed_dictionaries(
            {"type": STRINGS | (SCALARS if wild else st.none())},  # unknown types
            optional={"content": TEXTS, "x": VALUES},
        ),
    )
    return st.lists(known | VALUES if wild else known, max_size=12)


def decoys(wild: bool) -> st.SearchStrategy[tuple[str, object]]:
    """Unknown top-level fields: an ``events`` of their own, texts that read like a key, a duplicate key."""
    return st.one_of(
        st.tuples(st.sampled_from(["debug", "trace", "Events", 'x"events']), st.fixed_dictionaries({"events": events(wild)})),
        st.tuples(KEYS.filter(lambda key: key != "events"), VALUES),
        st.tuples(st.sampled_from(["note", "content", 'x"content']), TRICKY_TEXTS),
        st.tuples(st.just("events"), events(wild) | (VALUES if wild else st.none())),  # before the real one it loses
    )


EVENTS = {wild: events(wild) for wild in (False, True)}
DECOYS = {wild: decoys(wild) for wild in (False, True)}
OPTIONAL = {
    False: st.tuples(st.just("generated_title"), st.none() | TEXTS)
    | st.tuples(st.just("index_ids"), st.none() | st.lists(STRINGS, max_size=2))
    | st.tuples(st.just("job_metadata"), st.none() | st.just({"turns": 3, "is_error": False})),
    True: st.tuples(st.sampled_from(["generated_title", "index_ids", "job_metadata"]), VALUES),
}


@st.composite
def bodies(draw) -> str:
    """A body as JSON text with ``"FILLER"`` where ``inflate`` puts the filler: a failure shows it short."""
    wild = draw(st.sampled_from([False, False, False, True]))
    pairs: list[tuple[str, object]] = [
        ("session_id", draw(st.sampled_from(["s-1", "abc", "", "a/b"]) if wild else st.just("s-1"))),
        ("last_updated_at", draw(st.sampled_from([T0, T0, T0, "t" * MAX_TIMESTAMP_TEXT, "t" * (MAX_TIMESTAMP_TEXT + 1)]))),
        ("events", draw(EVENTS[wild] | st.none())),
    ]
    pairs += draw(st.lists(OPTIONAL[wild], max_size=2))
    if wild:
        pairs = [pair for pair in pairs if draw(st.booleans())] + draw(st.lists(st.tuples(KEYS, st.just("\ud800")), max_size=1))
    pairs += draw(st.lists(DECOYS[wild], max_size=4))
    pairs.append((draw(st.sampled_from(["filler", "content", "result"])), "FILLER"))
    pairs = draw(st.permutations(pairs))
    ascii_only = draw(st.booleans())
    comma, colon = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t"), ("\r\n,", ":  ")]))
    text = (
        draw(st.sampled_from(["", " ", "\n"]))
        + "{"
        + comma.join(
            json.dumps(key, ensure_ascii=ascii_only)
            + colon
            + json.dumps(value, ensure_ascii=ascii_only, separators=(comma, colon))
            for key, value in pairs
        )
        + "}"
        + draw(st.sampled_from(["", " ", "\n"]))
    )
    if wild and draw(st.booleans()):  # no longer JSON, or another JSON
        at = draw(st.integers(0, len(text)))
        char = draw(st.sampled_from(list(',:[]{}" \\\x00\x01\x0c0-eE.tnfé')))
        text = draw(st.sampled_from([text[:at] + text[at + 1 :], text[:at] + char + text[at:], text[:at]]))
    return text


def inflate(text: str) -> bytes:
    body = text.replace('"FILLER"', json.dumps(FILLER), 1).encode("utf-8", "surrogatepass")
    return body if len(body) >= LEAN_THRESHOLD else body + b" " * LEAN_THRESHOLD  # the filler was cut or deleted


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(text=bodies(), chunk=st.sampled_from([1, 3, 1 << 16]))
def test_any_large_body_parses_as_the_small_path_parses_it(text, chunk):
    with mock.patch.object(models, "EVENTS_CHUNK", chunk):
        assert_same(inflate(text))


def blanked(value):
    """``value`` as ``lean_json`` should leave it: the string value of a key ``content`` or ``result``, or of a
    key that ends with ``"content`` or ``"result`` (its JSON has ``\\"content":``), is empty; nothing else moves."""
    if isinstance(value, list):
        return [blanked(item) for item in value]
    if not isinstance(value, dict):
        return value
    return {
        key: ""
        if isinstance(item, str) and (key in ("content", "result") or key.endswith(('"content', '"result')))
        else blanked(item)
        for key, item in value.items()
    }


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(value=st.dictionaries(KEYS, VALUES, max_size=4), ascii_only=st.booleans())
def test_lean_json_blanks_only_unread_texts_and_never_a_text_that_looks_like_one(value, ascii_only):
    body = json.dumps(value, ensure_ascii=ascii_only).encode() + b" " * LEAN_THRESHOLD
    assert json.loads(models.lean_json(body)) == blanked(value)


# Item 4: last_updated_at is bounded at the boundary -------------------------------------------------------------


def test_a_timestamp_longer_than_the_bound_makes_a_listing_item_unreadable_and_a_retrieve_invalid():
    longest, too_long = "t" * MAX_TIMESTAMP_TEXT, "t" * (MAX_TIMESTAMP_TEXT + 1)
    page = parse_page(
        json.dumps(
            {"items": [{"session_id": "a", "last_updated_at": too_long}, {"session_id": "b", "last_updated_at": longest}]}
        ).encode()
    )
    assert [item.session_id for item in page.items] == ["b"] and page.unreadable == ("a",)
    for parse in (Summary.model_validate_json, parse_session):
        assert parse(body_of(("session_id", "s"), ("last_updated_at", longest))).last_updated_at == longest
        with pytest.raises(ValueError, match="last_updated_at"):
            parse(body_of(("session_id", "s"), ("last_updated_at", too_long)))
    large = body_of(("session_id", "s"), ("last_updated_at", too_long), ("events", run_events()), ("pad", FILLER))
    assert assert_same(large) == ("refused", False)

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/chat":
            return httpx.Response(
                200,
                json={"items": [{"session_id": "a", "last_updated_at": too_long}, {"session_id": "b", "last_updated_at": T0}]},
            )
        return httpx.Response(200, json={"session_id": "s", "last_updated_at": too_long, "events": []})

    client = build_client(
        Settings(base_url="https://api.test"), "llx-key", SelfMetrics(CollectorRegistry()), httpx.MockTransport(answer)
    )
    listing = run_async(client.list_sessions())
    assert [item.session_id for item in listing.sessions] == ["b"] and listing.unreadable == ["a"]
    for call in (client.retrieve, client.summary):
        with pytest.raises(PayloadError, match="invalid payload at last_updated_at"):
            run_async(call("s"))
