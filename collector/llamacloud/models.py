"""Pydantic models of the LlamaCloud chat payloads (DESIGN §2).

They validate only what derivation reads: text contents and tool arguments
are ignored, which keeps validation of long histories cheap. Unknown fields are
ignored, unknown event types become ``UnknownEvent``, and ``null`` where a list
is expected becomes an empty list.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Tag

PLAIN_EVENT_TYPES = frozenset({"user_input", "thinking_delta", "thinking", "text_delta", "text"})
KNOWN_EVENT_TYPES = PLAIN_EVENT_TYPES | {"tool_call", "tool_result", "stop"}
UNKNOWN = "_unknown"


def _none_to_empty(value: Any) -> Any:
    return () if value is None else value


StrTuple = Annotated[tuple[str, ...], BeforeValidator(_none_to_empty)]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class JobMetadata(_Payload):
    """Usage and status of a session's most recent run."""

    duration_ms: float | None = None
    total_input_tokens: int | None = None
    total_output_tokens: int | None = None
    turns: int | None = None
    is_error: bool | None = None
    error: str | None = None


class Summary(_Payload):
    session_id: str
    last_updated_at: str
    generated_title: str | None = None
    index_ids: StrTuple = ()
    shared_access: str | None = None
    job_metadata: JobMetadata | None = None


class Usage(_Payload):
    duration_ms: float | None = None
    total_input_tokens: int | None = None
    total_output_tokens: int | None = None
    turns: int | None = None


class PlainEvent(_Payload):
    """user_input, thinking(_delta), text(_delta): only the type matters here."""

    type: Literal["user_input", "thinking_delta", "thinking", "text_delta", "text"]


class ToolCallEvent(_Payload):
    type: Literal["tool_call"]
    name: str
    call_id: str


class ToolResultEvent(_Payload):
    type: Literal["tool_result"]
    call_id: str
    name: str | None = None


class StopEvent(_Payload):
    type: Literal["stop"]
    is_error: bool | None = None
    error: str | None = None
    usage: Annotated[Usage, BeforeValidator(lambda v: {} if v is None else v)] = Usage()
    skipped_index_ids: StrTuple = ()

    @property
    def failed(self) -> bool:
        """An explicit is_error wins; without it, an error text means failure."""
        return bool(self.error) if self.is_error is None else self.is_error


class UnknownEvent(_Payload):
    type: str = UNKNOWN


def _event_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind in PLAIN_EVENT_TYPES:
        return "plain"
    if kind in ("tool_call", "tool_result", "stop"):
        return kind
    return "unknown"


Event = Annotated[
    Union[
        Annotated[PlainEvent, Tag("plain")],
        Annotated[ToolCallEvent, Tag("tool_call")],
        Annotated[ToolResultEvent, Tag("tool_result")],
        Annotated[StopEvent, Tag("stop")],
        Annotated[UnknownEvent, Tag("unknown")],
    ],
    Discriminator(_event_tag),
]


class Session(Summary):
    """A session with its full, ordered event history."""

    events: Annotated[tuple[Event, ...], BeforeValidator(_none_to_empty)] = ()


class SessionPage(_Payload):
    items: Annotated[tuple[Summary, ...], BeforeValidator(_none_to_empty)] = ()
    next_page_token: str | None = None


def event_label(event: Any) -> str:
    """The ``type`` label of ``llamacloud_chat_events_total`` for an event."""
    return UNKNOWN if isinstance(event, UnknownEvent) else event.type
