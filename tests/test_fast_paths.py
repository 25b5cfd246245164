"""Issue 32: the native validators (``models.native``) give what the models give, or refuse and leave it to them.

The models themselves (``Session``, ``Summary``, ``SessionPage``, ``Listed``) stay the reference: their
Python validators say what an answer means. The native validators read the same bodies in pydantic-core
alone, for a subset of them; the oracle is the reference on arbitrary JSON-ish payloads:

- whatever the native validator accepts, the reference accepts with the very same result (types included:
  an ``int`` measure is not a ``float`` one, ``INVALID`` is ``INVALID``);
- what the public readers (``parse_page``, ``parse_session``, ``validate_summary``) give is what the code
  before issue 32 gave (kept here as ``reference_parse_page``), or the same refusal.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from pydantic import BaseModel, ValidationError

from collector.llamacloud import models
from collector.llamacloud.bounds import MAX_SESSION_ID_LENGTH, session_id_problem
from collector.llamacloud.client import READ_HEADERS, read_headers
from collector.llamacloud.models import (
    FAST_EVENTS,
    FAST_PAGE,
    FAST_SESSION,
    FAST_SUMMARY,
    INVALID,
    KNOWN_EVENT_TYPES,
    LISTED_ADAPTER,
    MAX_MEASURE,
    Session,
    SessionPage,
    Summary,
    _RawPage,
    parse_page,
    parse_session,
    validate_session,
    validate_summary,
)

pytestmark = pytest.mark.tier("unit")


def reference_parse_page(body: bytes) -> SessionPage:
    """``parse_page`` as it was before issue 32: the oracle of the listing."""
    try:
        return SessionPage.model_validate_json(body)
    except ValidationError:
        raw = _RawPage.model_validate_json(body)
    items, unreadable = [], []
    for item in raw.items:
        try:
            items.append(LISTED_ADAPTER.validate_python(item))
        except ValidationError:
            sid = item.get("session_id") if isinstance(item, dict) else None
            unreadable.append(sid if isinstance(sid, str) else "?")
    return SessionPage(items=tuple(items), next_page_token=raw.next_page_token, unreadable=tuple(unreadable))


def deep(value: Any) -> Any:
    """``value`` as a comparable tree that keeps types (``1 == 1.0 == True`` in Python) and NaN equal to NaN."""
    if value is INVALID:
        return ("INVALID",)
    if isinstance(value, BaseModel):
        fields = {name: deep(getattr(value, name)) for name in type(value).model_fields}
        return (type(value).__name__, fields, frozenset(value.model_fields_set), value.model_extra)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, tuple(deep(getattr(value, f.name)) for f in dataclasses.fields(value)))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(deep(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((deep(k), deep(v)) for k, v in value.items()))
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else repr(value))
    return (type(value).__name__, value)


def note(what: str) -> None:
    """How often the native path took a payload (``--hypothesis-show-statistics``), within a hypothesis test."""
    if currently_in_test_context():
        event(what)


def outcome(parse: Any, body: bytes) -> tuple[Any, ...]:
    try:
        return ("ok", deep(parse(body)))
    except ValidationError as exc:
        return ("refused", exc.title, str(exc))
    except (ValueError, TypeError) as exc:
        return ("refused", type(exc).__name__, str(exc))


def assert_native_agrees(native: Any, reference: Any, body: bytes) -> bool:
    """Whatever ``native`` accepts, ``reference`` accepts alike; True when ``native`` accepted."""
    try:
        fast = native.validate_json(body)
    except ValidationError:
        note("native refused")
        return False
    note("native accepted")
    assert deep(fast) == deep(reference(body))
    return True


# JSON-ish values, and values near every bound a validator of these models checks.
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.sampled_from([0, 1, MAX_MEASURE - 1, MAX_MEASURE, MAX_MEASURE + 1, -1, 2**63, 2**64 + 1])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.0, -0.0, 1.0, 0.5, float(MAX_MEASURE), float(MAX_MEASURE) * 2, 1e308, -1e-9])
    | st.text(max_size=8)
)
JSONISH = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8
)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any], odds: int = 8) -> st.SearchStrategy[Any]:
    """``good`` values, and one in ``odds`` a ``bad`` one: each payload has a fair chance to be read natively."""
    return st.integers(0, odds - 1).flatmap(lambda n: bad if n == 0 else good)


ODD_IDS = st.one_of(
    st.sampled_from(["", ".", "..", "...", "a", ".a", "a.", "a..", " ", "~", "\x7f", "a\tb", "a\nb", "été", "a\u200bb"]),
    st.sampled_from(["x" * MAX_SESSION_ID_LENGTH, "x" * (MAX_SESSION_ID_LENGTH + 1), "é" * MAX_SESSION_ID_LENGTH]),
    st.sampled_from(["é" * (MAX_SESSION_ID_LENGTH + 1), "a\u2028", "\U0001f600", "\ud7ff", "a\x00"]),
    st.text(max_size=4),
)
STR_IDS = mostly(
    st.uuids().map(str) | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=5), ODD_IDS, 3
)
IDS = mostly(STR_IDS, SCALARS | JSONISH, 10)
TEXTS = mostly(st.text(max_size=4), SCALARS | JSONISH)
STR_LISTS = mostly(st.none() | st.lists(st.text(max_size=5), max_size=3), st.lists(SCALARS, max_size=2) | JSONISH)
MEASURES = mostly(
    st.none() | st.integers(0, 10**6) | st.floats(0, 10**6) | st.sampled_from([0, MAX_MEASURE, float(MAX_MEASURE), -0.0]),
    SCALARS | JSONISH,
)
FLAGS = mostly(st.none() | st.booleans(), SCALARS | JSONISH)
TYPES = mostly(
    st.sampled_from(sorted(KNOWN_EVENT_TYPES)),
    st.sampled_from(["citation", "stop\n", "Stop", " stop", "_unknown", "", "stop\x00", "tool_call2"]) | SCALARS | JSONISH,
    5,
)


def maybe(draw: st.DrawFn, key: str, values: st.SearchStrategy[Any], into: dict[str, Any], odds: int = 2) -> None:
    """``into[key]`` from ``values``, or no ``key`` at all one time in ``odds``."""
    if draw(st.integers(0, odds - 1)):
        into[key] = draw(values)


@st.composite
def usages(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 20)) == 0:
        return draw(JSONISH)
    usage: dict[str, Any] = {}
    for name in ("duration_ms", "total_input_tokens", "total_output_tokens", "turns"):
        maybe(draw, name, MEASURES, usage, 4)
    return usage


@st.composite
def events(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 30)) == 0:
        return draw(JSONISH)
    event: dict[str, Any] = {}
    maybe(draw, "type", TYPES, event, 20)
    for key, values, odds in (
        ("name", TEXTS, 8),
        ("call_id", TEXTS, 8),
        ("content", TEXTS, 2),
        ("is_error", FLAGS, 2),
        ("error", mostly(st.none() | st.text(max_size=4), SCALARS), 2),
        ("usage", mostly(usages(), st.none(), 4), 4),
        ("skipped_index_ids", STR_LISTS, 2),
        ("extra", JSONISH, 2),
    ):
        maybe(draw, key, values, event, odds)
    return event


@st.composite
def summaries(draw: st.DrawFn, with_events: bool = False) -> Any:
    if draw(st.integers(0, 30)) == 0:
        return draw(JSONISH)
    body: dict[str, Any] = {}
    maybe(draw, "session_id", IDS, body, 20)
    maybe(draw, "last_updated_at", mostly(st.text(max_size=3), st.just("t" * 64) | st.just("t" * 65) | SCALARS), body, 20)
    maybe(draw, "generated_title", mostly(st.none() | st.text(max_size=4), SCALARS), body)
    maybe(draw, "index_ids", STR_LISTS, body)
    maybe(draw, "shared_access", mostly(st.none() | st.sampled_from(["query", "read_only", "x"]), SCALARS), body)
    if draw(st.booleans()):
        job = draw(usages())
        if isinstance(job, dict):
            maybe(draw, "is_error", FLAGS, job)
            maybe(draw, "error", mostly(st.none() | st.text(max_size=4), SCALARS), job)
        body["job_metadata"] = draw(mostly(st.just(job), st.none(), 3))
    if with_events:
        maybe(draw, "events", mostly(st.lists(events(), max_size=6), st.none() | JSONISH, 6), body, 8)
    return body


def encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()  # NaN and Infinity too: pydantic's parser reads them


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(summaries(with_events=True))
@example({"session_id": "a", "last_updated_at": "t", "events": [{"type": "stop", "usage": {"turns": -1}}]})
@example({"session_id": "a", "last_updated_at": "t", "events": [{"type": "stop", "usage": None, "skipped_index_ids": None}]})
@example({"session_id": "a", "last_updated_at": "t", "events": [{"type": "stop", "usage": {"turns": 1.0}}]})
@example({"session_id": "a", "last_updated_at": "t", "job_metadata": {"turns": MAX_MEASURE + 1, "duration_ms": MAX_MEASURE}})
@example({"session_id": "a", "last_updated_at": "t", "job_metadata": {"turns": float(MAX_MEASURE), "duration_ms": -0.0}})
@example({"session_id": "a", "last_updated_at": "t", "events": [{"type": "stop", "usage": {"turns": True}}]})
@example({"session_id": "a", "last_updated_at": "t", "events": [{"type": "citation"}, {"type": ["stop"]}, {}]})
@example({"session_id": "a", "last_updated_at": "t", "events": [{"type": "stop\n"}, {"type": 5}, {"type": None}]})
@example({"session_id": "a", "last_updated_at": "t", "events": [{"type": "tool_call"}]})
@example({"session_id": "a", "last_updated_at": "t", "events": None, "index_ids": None})
@example({"session_id": ".", "last_updated_at": "t"})
@example({"session_id": "été", "last_updated_at": "t"})
def test_a_session_reads_as_the_model_reads_it(body: Any) -> None:
    raw = encode(body)
    assert_native_agrees(FAST_SESSION, Session.model_validate_json, raw)
    assert_native_agrees(FAST_SUMMARY, Summary.model_validate_json, raw)
    assert outcome(validate_session, raw) == outcome(Session.model_validate_json, raw)
    assert outcome(parse_session, raw) == outcome(Session.model_validate_json, raw)
    assert outcome(validate_summary, raw) == outcome(Summary.model_validate_json, raw)


@SETTINGS
@given(st.lists(events(), max_size=8))
def test_a_slice_of_events_reads_as_the_model_reads_it(history: list[Any]) -> None:
    raw = encode({"events": history})
    assert_native_agrees(FAST_EVENTS, models._Events.model_validate_json, raw)


@st.composite
def pages(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 25)) == 0:
        return draw(JSONISH)
    page: dict[str, Any] = {}
    maybe(draw, "items", mostly(st.lists(summaries(), max_size=5), st.none() | JSONISH, 6), page, 8)
    token = mostly(st.none() | st.text(max_size=4), st.just("p" * 4096) | st.just("p" * 4097) | SCALARS | JSONISH)
    maybe(draw, "next_page_token", token, page)
    maybe(draw, "extra", JSONISH, page)
    return page


@SETTINGS
@given(pages())
@example({"items": [{"session_id": "a", "last_updated_at": "t", "index_ids": None}], "next_page_token": None})
@example({"items": None})
@example({"items": [{"session_id": "a", "last_updated_at": "t"}, {"session_id": "..", "last_updated_at": "t"}]})
@example({"items": [{"session_id": "été", "last_updated_at": "t", "index_ids": ["i"]}]})
@example({"items": [{"session_id": "a\u2028", "last_updated_at": "t"}, 5, None]})
def test_a_page_reads_as_it_did(page: Any) -> None:
    raw = encode(page)
    if assert_native_agrees(FAST_PAGE, SessionPage.model_validate_json, raw):
        assert deep(FAST_PAGE.validate_json(raw)) == deep(reference_parse_page(raw))
    assert outcome(parse_page, raw) == outcome(reference_parse_page, raw)


def test_the_native_validators_are_native() -> None:
    """pydantic-core reuses a complete class's own validator wherever a schema names the class; were that to
    happen here, the native validators would be the models again (correct, and as slow): they are not."""
    stop = b'{"session_id":"a","last_updated_at":"t","events":[{"type":"stop","usage":{"turns":-1}}]}'
    with pytest.raises(ValidationError):
        FAST_SESSION.validate_json(stop)  # the model makes it INVALID; the native validator leaves that to it
    (event,) = validate_session(stop).events
    assert isinstance(event, models.StopEvent) and event.usage.turns is INVALID
    with pytest.raises(ValidationError):
        FAST_PAGE.validate_json('{"items":[{"session_id":"été","last_updated_at":"t"}]}')
    assert parse_page('{"items":[{"session_id":"été","last_updated_at":"t"}]}'.encode()).items[0].session_id == "été"
    typical = {  # what the API sends (and the simulator): read natively, not twice
        "session_id": "7311d8a3-c2ce-4f44-bed4-d57b1e2feb89",
        "last_updated_at": "2026-12-03T09:24:44.898100+00:00",
        "generated_title": "Compare",
        "index_ids": None,
        "job_metadata": {"duration_ms": 527.1, "total_input_tokens": 3201, "turns": 2, "is_error": False, "error": None},
        "events": [
            {"type": "user_input", "content": "q"},
            {"type": "tool_call", "name": "t", "call_id": "c", "arguments": {"query": "q3"}},
            {"type": "tool_result", "name": "t", "call_id": "c", "result": "r", "image_attachment": {"source_id": "s"}},
            {"type": "citation", "source": "doc-1", "span": [3, 9]},
            {"type": "stop", "is_error": False, "error": None, "usage": None, "skipped_index_ids": None},
            {"type": "stop", "is_error": True, "error": "e", "usage": {"duration_ms": 1, "turns": 6}, "skipped_index_ids": ["i"]},
        ],
    }
    assert assert_native_agrees(FAST_SESSION, Session.model_validate_json, encode(typical))
    summary = {k: v for k, v in typical.items() if k != "events"}
    assert assert_native_agrees(
        FAST_PAGE, SessionPage.model_validate_json, encode({"items": [summary] * 3, "next_page_token": "3"})
    )
    for cls in (Session, Summary, SessionPage, models.Listed, models.StopEvent, models.Usage, models.JobMetadata):
        assert cls.__dict__["__pydantic_complete__"] is True  # as they were once the native ones were built


@given(st.text(max_size=MAX_SESSION_ID_LENGTH + 2) | STR_IDS)
@example("." * 1)
@example(".." * 1)
@example("x" * (MAX_SESSION_ID_LENGTH + 1))
def test_a_native_session_id_is_one_the_rules_accept(sid: str) -> None:
    """The native check of a session ID accepts printable ASCII IDs alone, each one ``session_id_problem`` accepts."""
    raw = encode({"items": [{"session_id": sid, "last_updated_at": "t"}]})
    try:
        FAST_PAGE.validate_json(raw)
    except ValidationError:
        assert session_id_problem(sid) is not None or not (sid.isascii() and sid.isprintable())
    else:
        assert session_id_problem(sid) is None
        assert sid.isascii() and sid.isprintable()


HEADER_NAMES = st.sampled_from(
    sorted(READ_HEADERS | {name.title() for name in READ_HEADERS} | {"x-other", "content-length", "Retry-After "})
)
HEADER_VALUES = st.binary(max_size=6) | st.sampled_from([b"5", b"1.5", b"application/json", b"\xc3\xa9", b"\xe9"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(HEADER_NAMES.map(str.encode), HEADER_VALUES), max_size=8))
def test_the_headers_read_are_what_a_lookup_gives(raw: list[tuple[bytes, bytes]]) -> None:
    """``read_headers``, one pass over a response's headers, gives each header as ``httpx.Headers.get`` does."""
    headers = httpx.Headers(raw)
    found = read_headers(headers)
    for name in READ_HEADERS:
        assert found.get(name) == headers.get(name)
    assert set(found) <= READ_HEADERS
