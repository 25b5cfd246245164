"""Pydantic models of the LlamaCloud chat payloads (DESIGN §2).

They validate only what derivation reads: text contents and tool arguments
are ignored, which keeps validation of long histories cheap. Events are
slotted pydantic dataclasses: a 100,000-event history validates in a quarter
of the CPU and a tenth of the memory of BaseModel events (bench/). Unknown
fields are ignored, unknown event types become ``UnknownEvent``, and ``null``
where a list is expected becomes an empty list.
"""

from __future__ import annotations

import json
import math
import re
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

from collector.llamacloud.bounds import session_id_problem

LEAN_THRESHOLD = 1 << 20
_UNREAD_STRINGS = re.compile(rb'"(content|result)"\s*:\s*"(?:[^"\\]|\\.)*"')


def lean_json(body: bytes) -> bytes:
    """A large body without the text of ``content`` and ``result`` strings, which derivation never reads.

    Parsing JSON builds a tree about three times the size of its input; dropping the
    texts first keeps a history of tens of MB within a small multiple of its size.
    A quote inside a JSON string is always escaped, so only real keys match.
    """
    if len(body) < LEAN_THRESHOLD:
        return body
    return _UNREAD_STRINGS.sub(rb'"\1":""', body)


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


def refused(measured: Any) -> tuple[str, ...]:
    """Names of the measures of ``measured`` (job metadata or usage) that are ``INVALID``."""
    return tuple(name for name in MEASURES if getattr(measured, name) is INVALID)


def known(value: Any) -> Any:
    """A measure as counters take it: ``INVALID`` becomes unknown (None)."""
    return None if value is INVALID else value


class Summary(_Payload):
    session_id: SessionId
    last_updated_at: str
    generated_title: str | None = None
    index_ids: StrTuple = ()
    shared_access: str | None = None
    job_metadata: JobMetadata | None = None


EVENT_CONFIG = ConfigDict(extra="ignore")


NO_USAGE = Usage()


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
    usage: Annotated[Usage, BeforeValidator(lambda v: {} if v is None else v)] = NO_USAGE
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
    last_updated_at: str
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


def parse_page(body: bytes) -> SessionPage:
    """A ``list`` page; one bad item is skipped and reported, not the whole page."""
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


_EVENTS_KEY = re.compile(r'"events"\s*:\s*\[')
_SPACE = re.compile(r"[\s,]*")
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_session(body: bytes) -> Session:
    """Validate a ``retrieve`` body; a large one event by event, to keep memory near its size.

    Parsing a whole history at once builds a JSON tree of about 500 bytes per event
    (50 MB for 100,000 events) before any model exists. Above ``LEAN_THRESHOLD`` the
    unread texts are dropped (``lean_json``) and the ``events`` array is decoded one
    element at a time. Nested content lives inside that array, so the first
    ``"events": [`` is the top-level key. Raises ``ValueError`` on a bad body.
    """
    if len(body) < LEAN_THRESHOLD:
        return Session.model_validate_json(body)
    try:
        return _parse_large(body)
    except RecursionError:  # the stdlib decoder's own limit; pydantic's parser says "recursion limit"
        raise ValueError("JSON nested too deeply") from None


def _parse_large(body: bytes) -> Session:
    text = lean_json(body).decode("utf-8")
    match = _EVENTS_KEY.search(text)
    if match is None:
        return Session.model_validate_json(text)
    decoder, events, index = json.JSONDecoder(), [], match.end()
    while True:
        index = _SPACE.match(text, index).end()  # type: ignore[union-attr]  # [\s,]* matches everywhere
        if index >= len(text):
            raise ValueError("events: unterminated array")
        if text[index] == "]":
            break
        item, index = decoder.raw_decode(text, index)
        events.append(EVENT_ADAPTER.validate_python(item))
    rest = Session.model_validate_json(text[: match.end()] + text[index:])
    return rest.model_copy(update={"events": tuple(events)})


def event_label(event: Any) -> str:
    """The ``type`` label of ``llamacloud_chat_events_total`` for an event."""
    return UNKNOWN if type(event) is UnknownEvent else event.type
