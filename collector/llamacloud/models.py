"""Pydantic models of the LlamaCloud chat payloads (DESIGN §2).

They validate only what derivation reads: text contents and tool arguments
are ignored, which keeps validation of long histories cheap. Events are
slotted pydantic dataclasses: a 100,000-event history validates in a quarter
of the CPU and a tenth of the memory of BaseModel events (bench/). Unknown
fields are ignored, unknown event types become ``UnknownEvent``, and ``null``
where a list is expected becomes an empty list.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    StringConstraints,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import CoreSchema, SchemaValidator
from pydantic_core import core_schema as cs

from collector.llamacloud.bounds import MAX_SESSION_ID_LENGTH, session_id_problem

Body = bytes | bytearray
"""An answer's body as read (grown in a ``bytearray``: no copy of tens of MB to make it ``bytes``)."""
LEAN_THRESHOLD = 1 << 20
_JSON_SPACE = rb"[ \t\n\r]*"
_JSON_STRING = (  # a string as pydantic's JSON parser accepts one, once the body is known to be UTF-8
    rb'"(?:[^"\\\x00-\x1f]++'
    rb'|\\["\\/bfnrt]'
    rb"|\\u(?![dD][89a-fA-F])[0-9a-fA-F]{4}"  # not a surrogate ...
    rb"|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"  # ... unless a high one then a low one
    rb')*+"'
)
_UNREAD_STRINGS = re.compile(rb'"(content|result)"' + _JSON_SPACE + rb":" + _JSON_SPACE + _JSON_STRING)
_BLANKED = {b"content": b'"content":""', b"result": b'"result":""'}
_UTF8_CHUNK = 1 << 20


def lean_json(body: Body) -> Body:
    """A large body without the text of ``content`` and ``result`` strings, which derivation never reads.

    Parsing JSON builds a tree about three times the size of its input; dropping the
    texts first keeps a history of tens of MB within a small multiple of its size.
    A quote inside a JSON string is always escaped, so a match starts at a real key named
    ``content`` or ``result``, or inside a key that ends with one (``"x\\"content"``); either way
    its value is never read. Only a string the JSON parser accepts is blanked, in a body that
    is UTF-8 (else ``UnicodeDecodeError``, a ``ValueError``): a control character, a bad
    escape, a lone surrogate or a bad byte in a text is left for the parser to refuse, as it
    refuses it in a small body. So the body means the same, or is refused the same, after.
    """
    if len(body) < LEAN_THRESHOLD:
        return body
    decoder, view = codecs.getincrementaldecoder("utf-8")(), memoryview(body)
    for start in range(0, len(body), _UTF8_CHUNK):  # checked a chunk at a time: no copy of the whole body
        decoder.decode(view[start : start + _UTF8_CHUNK])
    decoder.decode(b"", final=True)
    lean, done = bytearray(), 0
    for match in _UNREAD_STRINGS.finditer(body):  # not re.sub: it holds every piece until the end (6x the body)
        lean += view[done : match.start()]
        lean += _BLANKED[match[1]]
        done = match.end()
    if not done:
        return body  # no text to drop: no copy of the body either
    lean += view[done:]
    return lean  # not bytes(lean): a second copy of a body of tens of MB


PLAIN_EVENT_TYPES = frozenset({"user_input", "thinking_delta", "thinking", "text_delta", "text"})
KNOWN_EVENT_TYPES = PLAIN_EVENT_TYPES | {"tool_call", "tool_result", "stop"}
UNKNOWN = "_unknown"


def _none_to_empty(value: Any) -> Any:
    return () if value is None else value


StrTuple = Annotated[tuple[str, ...], BeforeValidator(_none_to_empty)]

MAX_MEASURE = 2**53
"""Above this a JSON number is no longer an exact count; no real duration or token count gets near it."""


class _Invalid:
    """A measure the API sent that no counter may take: negative, NaN, infinite, over 2**53, not a number."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()


def _measure(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return INVALID
    if isinstance(value, float) and not math.isfinite(value):
        return INVALID
    return value if 0 <= value <= MAX_MEASURE else INVALID


Measure = Annotated[Any, BeforeValidator(_measure)]
"""A finite number in [0, 2**53], None when absent, or ``INVALID``: checked here, refused by derivation."""


def _session_id(value: str) -> str:
    problem = session_id_problem(value)
    if problem:
        raise ValueError(problem)
    return value


SessionId = Annotated[str, AfterValidator(_session_id)]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Measures(_Payload):
    """The four measures of a run, as a stop's ``usage`` and ``job_metadata`` both carry them: declared once."""

    duration_ms: Measure = None
    total_input_tokens: Measure = None
    total_output_tokens: Measure = None
    turns: Measure = None


class JobMetadata(Measures):
    """Usage and status of a session's most recent run."""

    is_error: bool | None = None
    error: str | None = None


class Usage(Measures):
    """A stop's usage."""


MEASURES = tuple(Measures.model_fields)
"""The ``Measure`` fields of ``JobMetadata`` and of a stop's ``Usage``."""
if MEASURES != ("duration_ms", "total_input_tokens", "total_output_tokens", "turns"):  # ``refused`` reads them by name
    raise TypeError(f"refused() reads the measures {MEASURES} by name: update it")


def refused(measured: Any) -> tuple[str, ...]:
    """Names of the measures of ``measured`` (job metadata or usage) that are ``INVALID``."""
    values = (measured.duration_ms, measured.total_input_tokens, measured.total_output_tokens, measured.turns)
    if INVALID not in values:  # nearly always: no name to look for
        return ()
    return tuple(name for name, value in zip(MEASURES, values, strict=True) if value is INVALID)


def known(value: Any) -> Any:
    """A measure as counters take it: ``INVALID`` becomes unknown (None)."""
    return None if value is INVALID else value


MAX_TIMESTAMP_TEXT = 64
"""Characters of a ``last_updated_at`` (a real ISO timestamp has about 32): a longer one makes its payload invalid."""

Timestamp = Annotated[str, StringConstraints(max_length=MAX_TIMESTAMP_TEXT)]


class Summary(_Payload):
    session_id: SessionId
    last_updated_at: Timestamp
    generated_title: str | None = None
    index_ids: StrTuple = ()
    shared_access: str | None = None
    job_metadata: JobMetadata | None = None


EVENT_CONFIG = ConfigDict(extra="ignore")


NO_USAGE = Usage()


def _usage_or_empty(value: Any) -> Any:
    return {} if value is None else value


@dataclass(slots=True, frozen=True, config=EVENT_CONFIG)
class PlainEvent:
    """user_input, thinking(_delta), text(_delta): only the type matters here."""

    type: Literal["user_input", "thinking_delta", "thinking", "text_delta", "text"]


@dataclass(slots=True, frozen=True, config=EVENT_CONFIG)
class ToolCallEvent:
    type: Literal["tool_call"]
    name: str
    call_id: str


@dataclass(slots=True, frozen=True, config=EVENT_CONFIG)
class ToolResultEvent:
    type: Literal["tool_result"]
    call_id: str
    name: str | None = None


@dataclass(slots=True, frozen=True, config=EVENT_CONFIG)
class StopEvent:
    type: Literal["stop"]
    is_error: bool | None = None
    error: str | None = None
    usage: Annotated[Usage, BeforeValidator(_usage_or_empty)] = NO_USAGE
    skipped_index_ids: StrTuple = ()

    @property
    def failed(self) -> bool:
        """An explicit is_error wins; without it, an error text means failure."""
        return bool(self.error) if self.is_error is None else self.is_error


@dataclass(slots=True, frozen=True, config=EVENT_CONFIG)
class UnknownEvent:
    type: Any = UNKNOWN


def _event_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if not isinstance(kind, str):  # a list or a mapping is no type this release knows: an unknown event
        return "unknown"
    if kind in PLAIN_EVENT_TYPES:
        return "plain"
    if kind in ("tool_call", "tool_result", "stop"):
        return kind
    return "unknown"


Event = Annotated[
    Union[  # noqa: UP007 - one member per line reads better
        Annotated[PlainEvent, Tag("plain")],
        Annotated[ToolCallEvent, Tag("tool_call")],
        Annotated[ToolResultEvent, Tag("tool_result")],
        Annotated[StopEvent, Tag("stop")],
        Annotated[UnknownEvent, Tag("unknown")],
    ],
    Discriminator(_event_tag),
]


class Session(Summary):
    """A session with its full, ordered event history (``null`` events read as none)."""

    # No before-validator here: one would turn the whole JSON history into Python objects first. The API may
    # send null; the after-validator makes it (), so once validated it is always a tuple, as typed for readers.
    if TYPE_CHECKING:
        events: tuple[Event, ...]
    else:
        events: tuple[Event, ...] | None = ()

    @model_validator(mode="after")
    def _no_null_events(self) -> Session:
        if self.events is None:
            object.__setattr__(self, "events", ())
        return self


PageToken = Annotated[str, StringConstraints(max_length=4096)]
"""Sent back in the next request's URL; a longer one is an attack, not a cursor."""


@dataclass(slots=True, frozen=True, config=EVENT_CONFIG)
class Listed:
    """A ``list`` item, as far as discovery and change detection read it.

    The rest of the summary (title, ``job_metadata``) comes with ``retrieve``; not
    building it here keeps a 10,000-session listing small and cheap to validate.
    """

    session_id: SessionId
    last_updated_at: Timestamp
    index_ids: StrTuple = ()


LISTED_ADAPTER = TypeAdapter(Listed)


class SessionPage(_Payload):
    items: Annotated[tuple[Listed, ...], BeforeValidator(_none_to_empty)] = ()
    next_page_token: PageToken | None = None
    unreadable: tuple[str, ...] = ()
    """IDs (or "?") of items that did not validate; the rest of the page still counts."""


class _RawPage(_Payload):
    items: Annotated[tuple[Any, ...], BeforeValidator(_none_to_empty)] = ()
    next_page_token: PageToken | None = None


# Native validation (issue 32). The models above are the reference: what they accept, and how, is the contract.
# Their Python validators cost a call from Rust into Python per value (a session ID, each measure, each event's
# type), and a before-validator on a list turns its whole JSON into Python objects first (a listing page's items,
# each with its job metadata: half the cost of a page). ``native`` derives, from a model's own schema, one that
# does the same checks in pydantic-core alone, and accepts a subset of what the model accepts, with the same
# result: an ASCII session ID (anything else is left to the reference), a measure that is a plain count (an
# impossible one is left to the reference, which makes it ``INVALID``). So a body is read by the native validator
# first and, whenever it refuses, by the model itself: the same answer and the same refusal
# (tests/test_fast_paths.py holds them equal on arbitrary JSON).

_ASCII_ID_CHAR = r"[ -~]"  # printable ASCII: always printable for ``str.isprintable``
_ASCII_ID_NOT_DOT = r"[ -\-/-~]"
FAST_SESSION_ID = (
    rf"^(?:{_ASCII_ID_CHAR}{{3,{MAX_SESSION_ID_LENGTH}}}"  # three characters or more: never ``.`` nor ``..``
    rf"|{_ASCII_ID_NOT_DOT}{_ASCII_ID_CHAR}?"  # one or two, the first not a dot
    rf"|\.{_ASCII_ID_NOT_DOT})$"  # two, a dot then another character
)
"""A session ID ``session_id_problem`` accepts, in printable ASCII (a UUID): checked in pydantic-core."""
_NOT_KNOWN_TYPE = rf"\A(?!(?:{'|'.join(sorted(KNOWN_EVENT_TYPES))})\Z)"
"""An event ``type`` string that is none of the known ones (Python's ``re``: the Rust engine has no lookahead)."""


def _or_default(schema: CoreSchema, default: Any) -> CoreSchema:
    """``schema``, or ``default`` for a JSON null: what ``BeforeValidator(None -> default)`` does, natively (the
    null is taken by ``none``, then the default replaces what the inner schema refuses: a None)."""
    on_null = cs.chain_schema([cs.none_schema(), cs.with_default_schema(schema, default=default, on_error="default")])
    return cs.union_schema([schema, on_null], mode="left_to_right")


_NATIVE_MEASURE = cs.union_schema(
    [
        cs.none_schema(),
        cs.int_schema(strict=True, ge=0, le=MAX_MEASURE),
        cs.float_schema(strict=True, allow_inf_nan=False, ge=0, lt=MAX_MEASURE),
    ],
    mode="left_to_right",
)
"""``_measure`` for the values it keeps as they are; any other makes the native path refuse (the reference
then makes it ``INVALID``). The float takes a JSON integer too, which the int refused: one over 2**53 would
round down to 2**53 and pass ``le``, so the bound is ``lt`` (a float of exactly 2**53 is left to the model)."""

_UNKNOWN_TYPE = cs.union_schema(
    [
        cs.str_schema(pattern=_NOT_KNOWN_TYPE, regex_engine="python-re"),
        cs.none_schema(),
        cs.bool_schema(strict=True),
        cs.int_schema(strict=True),
        cs.float_schema(strict=True),
        cs.list_schema(cs.any_schema()),
        cs.dict_schema(cs.any_schema(), cs.any_schema()),
    ],
    mode="left_to_right",
)
"""An ``UnknownEvent``'s ``type``: any JSON value but a known type's name (an event of a known type that its
own class refuses is refused, as ``_event_tag`` sends it there, not here)."""


def _function(node: dict[str, Any]) -> Any:
    function = node.get("function")
    return function.get("function") if isinstance(function, dict) else None


def native(schema: Any) -> Any:
    """A copy of a core ``schema`` with this module's Python validators replaced by native ones (see above);
    one it does not know raises ``TypeError``, so nothing slow or different goes by unnoticed."""
    if isinstance(schema, list):
        return [native(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    kind, function = schema.get("type"), _function(schema)
    if kind == "function-after" and function is _session_id:
        return cs.str_schema(pattern=FAST_SESSION_ID)
    if kind == "function-after" and function is Session._no_null_events:
        model = native(schema["schema"])
        events = model["schema"]["fields"]["events"]["schema"]  # default((), nullable(tuple))
        events["schema"] = _or_default(events["schema"]["schema"], ())
        return model
    if kind == "function-before" and function is _none_to_empty:
        return _or_default(native(schema["schema"]), ())
    if kind == "function-before" and function is _usage_or_empty:
        return _or_default(native(schema["schema"]), Usage())
    if kind == "function-before" and function is _measure:
        return _NATIVE_MEASURE
    if kind == "tagged-union" and schema.get("discriminator") is _event_tag:
        choices = native(schema["choices"])
        known = {tag: choices["plain" if tag in PLAIN_EVENT_TYPES else tag] for tag in sorted(KNOWN_EVENT_TYPES)}
        # a known type to its class by the ``type`` key (as ``_event_tag``), any other to ``UnknownEvent``
        return cs.union_schema([cs.tagged_union_schema(known, discriminator="type"), choices["unknown"]], mode="left_to_right")
    if (isinstance(kind, str) and kind.startswith("function-")) or callable(schema.get("discriminator")):
        raise TypeError(f"no native form of {kind} {function or schema.get('discriminator')!r}")
    copied = {key: native(value) for key, value in schema.items()}
    if kind == "dataclass" and schema.get("cls") is UnknownEvent:
        (field,) = copied["schema"]["fields"]
        field["schema"]["schema"] = _UNKNOWN_TYPE  # default(UNKNOWN, any)
    return copied


def _classes(schema: Any) -> set[type]:
    """The model and dataclass classes a core schema builds."""
    if isinstance(schema, list):
        return set().union(*map(_classes, schema))
    if not isinstance(schema, dict):
        return set()
    found = set().union(*map(_classes, schema.values()))
    return found | {schema["cls"]} if schema.get("type") in ("model", "dataclass") else found


def native_validator(model: Any) -> SchemaValidator:
    """``model``'s validator, built from ``native`` of its schema.

    pydantic-core reuses the validator a complete class already has wherever its schema names the class,
    whatever the rest of that schema says: each class is marked incomplete while this one is built, so its
    own (native) schema is used. Only the building is affected; the classes are as they were after."""
    schema = native(model.__pydantic_core_schema__)
    marks = {cls: cls.__dict__.get("__pydantic_complete__") for cls in _classes(schema)}
    try:
        for cls in marks:
            cls.__pydantic_complete__ = False  # type: ignore[attr-defined]
        return SchemaValidator(schema)
    finally:
        for cls, mark in marks.items():
            cls.__pydantic_complete__ = mark  # type: ignore[attr-defined]


FAST_PAGE = native_validator(SessionPage)
FAST_SESSION = native_validator(Session)
FAST_SUMMARY = native_validator(Summary)


def parse_page(body: Body) -> SessionPage:
    """A ``list`` page; one bad item is skipped and reported, not the whole page."""
    try:
        return FAST_PAGE.validate_json(body)  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - whatever the fast path refuses, the reference below decides
        pass
    try:
        return SessionPage.model_validate_json(body)
    except ValidationError:
        raw = _RawPage.model_validate_json(body)  # a broken page itself still raises
    items, unreadable = [], []
    for item in raw.items:
        try:
            items.append(LISTED_ADAPTER.validate_python(item))
        except ValidationError:
            sid = item.get("session_id") if isinstance(item, dict) else None
            unreadable.append(sid if isinstance(sid, str) else "?")
    return SessionPage(items=tuple(items), next_page_token=raw.next_page_token, unreadable=tuple(unreadable))


_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace, no more: \s would take \f, \v and others
_decode = json.JSONDecoder().raw_decode
_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
"""``raw_decode`` without its frame (no stub names it): StopIteration where no value is."""
_SPACES = " \t\n\r"
EVENTS_CHUNK = 1 << 16
"""Characters of a large body's ``events`` array validated at once."""


class _Events(_Payload):
    """A slice of an ``events`` array, as deep in its JSON as in a body: the parser's nesting limit is the same."""

    events: tuple[Event, ...]


FAST_EVENTS = native_validator(_Events)


def _validated_events(text: str) -> tuple[Any, ...]:
    try:
        return FAST_EVENTS.validate_json(text).events  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - whatever the native path refuses, the model decides
        return _Events.model_validate_json(text).events


def validate_session(body: Body | str) -> Session:
    """``Session.model_validate_json(body)``, natively when it can (see ``native``): the same answer or refusal."""
    try:
        return FAST_SESSION.validate_json(body)  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - whatever the native path refuses, the model decides
        return Session.model_validate_json(body)


def validate_summary(body: Body | str) -> Summary:
    """``Summary.model_validate_json(body)``, natively when it can: the same answer or refusal."""
    try:
        return FAST_SUMMARY.validate_json(body)  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - whatever the native path refuses, the model decides
        return Summary.model_validate_json(body)


class TooManyEvents(ValueError):
    """A history longer than ``--max-events-per-session``: the session fails on its own, like an over-size body."""


def over_limit(count: int, max_events: int | None) -> None:
    if max_events is not None and count > max_events:
        raise TooManyEvents(f"a history of over {max_events} events (--max-events-per-session)")


def parse_session(body: Body, max_events: int | None = None) -> Session:
    """Validate a ``retrieve`` body; a large one event by event, to keep memory near its size.

    Parsing a whole history at once builds a JSON tree of about 500 bytes per event
    (50 MB for 100,000 events) before any model exists. Above ``LEAN_THRESHOLD`` the
    unread texts are dropped (``lean_json``) and the top-level ``events`` array is
    validated a slice at a time (``_parse_large``), with the same answer, or the same
    refusal, as ``Session.model_validate_json``. Raises ``ValueError`` on a bad body.
    """
    if len(body) < LEAN_THRESHOLD:
        session = validate_session(body)
        over_limit(len(session.events), max_events)
        return session
    try:
        return _parse_large(body, max_events)
    except RecursionError:  # the stdlib decoder's own limit; pydantic's parser says "recursion limit"
        raise ValueError("JSON nested too deeply") from None


def _space(text: str, index: int) -> int:
    return _SPACE.match(text, index).end()  # type: ignore[union-attr]  # * matches everywhere


def _parse_large(body: Body, max_events: int | None = None) -> Session:
    """``Session.model_validate_json(body)``, with the history in the top-level ``events`` key, wherever it is.

    The stdlib decoder only finds where each top-level value and each event ends (an
    unknown field before ``events`` may hold an ``events`` of its own, or a text that
    looks like one); pydantic's parser then reads every character, the events a slice
    at a time at their depth in the body, the other fields with ``[]`` for the history.
    As there, the last of duplicate keys wins and the others are parsed, not validated.
    """
    text = lean_json(body).decode("utf-8")
    index = _space(text, 0)
    if not text.startswith("{", index):
        raise ValueError("a session is a JSON object")
    history: tuple[int, int, list[Any] | Exception] | None = None
    index = _space(text, index + 1)
    if text.startswith("}", index):
        index += 1
    else:
        while True:
            if not text.startswith('"', index):
                raise ValueError(f"expected a key at {index}")
            key, index = _decode(text, index)
            index = _space(text, index)
            if not text.startswith(":", index):
                raise ValueError(f"expected ':' at {index}")
            index = _space(text, index + 1)
            if key == "events" and text.startswith("[", index):
                start = index
                events, index = _events(text, index, max_events)
                history = (start, index, events)
            else:
                if key == "events":  # not an array: pydantic reads it, from the whole text
                    history = None
                index = _decode(text, index)[1]
            index = _space(text, index)
            if text.startswith(",", index):
                index = _space(text, index + 1)
            elif text.startswith("}", index):
                index += 1
                break
            else:
                raise ValueError(f"expected ',' or '}}' at {index}")
    if history is None:
        return validate_session(text)
    start, end, events = history  # pydantic reads all but the history: what follows the object too
    rest = validate_session(text[:start] + "[]" + text[end:])
    if isinstance(events, Exception):
        raise events
    return rest.model_copy(update={"events": tuple(events)})


def _events(text: str, index: int, max_events: int | None = None) -> tuple[list[Any] | Exception, int]:
    """The events of the array at ``index``, or what refused them (raised only if no later key replaces
    them), and the index after the array. Pydantic reads each slice whole; the comma between two slices,
    which it does not see, is checked here.

    The array is scanned whole before any event is built: a history past ``max_events`` is refused having
    built nothing. Building a million events only to drop them, at each retry of the session, left the
    allocator's pages behind every time (RSS 207 -> 237 -> 268 -> 328 MB over four retries of one session)."""
    slices: list[tuple[int, int]] = []
    count = 0
    first = index + 1  # where the slice not yet set apart starts
    index = _space(text, first)
    if text.startswith("]", index):
        return [], index + 1
    while True:
        try:
            end = _scan(text, index)[1]
        except StopIteration:
            raise ValueError(f"events: expected a value at {index}") from None
        count += 1
        over_limit(count, max_events)
        index = end if text.startswith(",", end) else _space(text, end)  # no regex per event in a compact body
        last = text.startswith("]", index)
        if not last and not text.startswith(",", index):
            raise ValueError(f"events: expected ',' or ']' at {index}")
        if last or end - first >= EVENTS_CHUNK:
            slices.append((first, end))
            if last:
                return _validated(text, slices), index + 1
            first = index + 1
        index += 1
        if text[index : index + 1] in _SPACES:  # also at the end of the text, where the scan then fails
            index = _space(text, index)


def _validated(text: str, slices: list[tuple[int, int]]) -> list[Any] | Exception:
    """The events of each slice of ``text``, in order, or what refused the first that failed."""
    events: list[Any] = []
    for first, end in slices:
        try:
            events.extend(_validated_events('{"events":[' + text[first:end] + "]}"))
        except (ValueError, TypeError) as exc:  # a ValidationError is a ValueError
            return exc
    return events


def event_label(event: Any) -> str:
    """The ``type`` label of ``llamacloud_chat_events_total`` for an event."""
    return UNKNOWN if type(event) is UnknownEvent else event.type


MAX_PROJECT_NAME = 256
"""Characters of a project's name kept for ``llamacloud_project_info`` (a label value); the rest is cut."""
MAX_PROJECTS = 250
"""Projects watched at once: a hostile or broken listing of a million projects must not make a million pollers.
Past it, the rest are left out (in ID order) and said so in the log. With a state file each project keeps three
file handles open (the file, its WAL and shared memory): 250 projects stay well under the 1,024 handles a
container often starts with (the red team ran out of them at about 340 projects)."""


def _project_name(value: Any) -> str:
    return value[:MAX_PROJECT_NAME] if isinstance(value, str) and value.isprintable() else ""


@dataclass(slots=True, frozen=True, config=EVENT_CONFIG)
class Project:
    """A ``GET /api/v1/projects`` item, as far as the collector reads it (the SDK's ``Project``): its ID goes
    into every request of its pollers and into a label, checked as a session ID is; a name that is not a
    printable string is shown as none."""

    id: SessionId
    name: Annotated[str, BeforeValidator(_project_name)] = ""
    is_default: bool = False


PROJECT_ADAPTER = TypeAdapter(Project)


class ProjectList(_Payload):
    projects: tuple[Project, ...] = ()
    unreadable: int = 0
    """Items that did not validate: left out, the others still count."""


def parse_projects(body: Body) -> ProjectList:
    """``GET /api/v1/projects``: a plain list (the vendor's API), or ``{"items": [...]}`` as its paged form has;
    a bad item is skipped and counted, a body that is neither raises ``ValueError``."""
    raw = json.loads(body)
    if isinstance(raw, dict):
        raw = raw.get("items")
    if not isinstance(raw, list):
        raise ValueError("not a list of projects")
    projects: dict[str, Project] = {}
    unreadable = 0
    for item in raw:
        try:
            project = PROJECT_ADAPTER.validate_python(item)
        except ValidationError:
            unreadable += 1
            continue
        projects.setdefault(project.id, project)  # listed twice: the first
    return ProjectList(projects=tuple(projects.values()), unreadable=unreadable)
