"""The chat families, each declared once (kube-state-metrics' ``FamilyGenerator``: one literal per family).

An entry holds everything its family needs: name, help, type, labels, how a run is observed, the default
buckets of a histogram, and the release that added it. Everything else iterates ``FAMILIES``: the
aggregates and their storage in the state file (``collector.aggregates``), the Prometheus rendering
(``collector.metrics``), the bucket settings (``collector.settings``), the README's metric table
(``scripts/generate.py``) and the tests' expected values and invariants.

Adding a histogram family over a value the derivation already reads is three places: its entry here, its
derivation (a field of ``RunRecord``, in ``collector.derive``) and its test (the value a simulated run
gives it, ``tests/helpers.py`` ``record()``). Forgetting another place fails a test that names the family.

A family's stored histogram keeps its own bounds in the state file: a family added since a file was
written starts empty there (it counts the runs from the upgrade on), and the others are not re-derived.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from collector.derive import RunRecord
from collector.llamacloud.models import KNOWN_EVENT_TYPES, UNKNOWN

Key = str | tuple[str, ...]
"""A counter's series: its one label value, or its label values in order."""

AS_OF = "; as of the last poll, not of this scrape."
"""The chat families come from the last committed poll (writing_exporters, "Scheduling")."""

DURATION_BUCKETS: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 102.4, 204.8, 409.6, 600, 1200)
TOKEN_BUCKETS: tuple[float, ...] = tuple(float(4**i) for i in range(14))  # 1, 4, 16, ... 67108864
TURN_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
TOOL_CALL_BUCKETS: tuple[float, ...] = (0, 1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True, slots=True)
class Run:
    """One finished run as a counter observes it: the record, and its session's labels, already bounded."""

    record: RunRecord
    indexes: frozenset[str]
    """The ``index_id`` values the run counts under: each index of its session, ``_none`` when unbound."""
    tool: Callable[[str], str]
    """A tool name as a bounded label value."""
    index: Callable[[str], str]
    """An index ID as a bounded label value."""

    @property
    def outcome(self) -> str:
        return "error" if self.record.failed else "success"


@dataclass(frozen=True, slots=True)
class Known:
    """Label values known before any run has them (Prometheus' "avoid missing metrics"): a counter shows each
    series they make at 0, so the first failure of a kind moves ``increase()``."""

    error_types: tuple[str, ...]
    """Every configured ``error_type`` and ``_OTHER``."""


OUTCOMES = ("success", "error")
TOOL_OUTCOMES = ("result", "no_result")
EVENT_TYPES = (*sorted(KNOWN_EVENT_TYPES), UNKNOWN)


def _firsts(series: Iterable[Key]) -> set[str]:
    """The first label values of a counter's series (its tools, its indexes)."""
    return {key[0] for key in series if isinstance(key, tuple)}


SemConv = Literal["llamacloud", "gen_ai", "both"]
"""Which names the chat families are exposed under (``--semconv``)."""

GEN_AI_CONSTANTS = (("gen_ai_operation_name", "invoke_agent"), ("gen_ai_provider_name", "llamacloud"))
"""The attributes every GenAI-named series carries: a LlamaCloud chat run is one agent invocation."""

Series = Callable[[Mapping[str, Counter[Key]], "Known"], Iterable[tuple[tuple[tuple[str, str], ...], float]]]
"""A counter's series under its GenAI name, from the counters and the label values known in advance:
``((label, value), ...)`` and the count."""


@dataclass(frozen=True)
class GenAi:
    """A family's name under the OpenTelemetry GenAI semantic conventions (``--semconv``, DESIGN §5), as
    Prometheus' default OTLP translation writes it (``.`` to ``_``; ``s`` to ``_seconds``; a unit in braces,
    such as ``{token}``, adds nothing), with ``GEN_AI_CONSTANTS``. Never a second count: the same aggregates,
    another name."""

    name: str
    otel: str
    """Its OpenTelemetry name, as pushed over OTLP (``--otlp-endpoint``): ``gen_ai.invoke_agent.duration``."""
    unit: str
    """Its OpenTelemetry unit (``s``; ``{token}`` and the like add nothing to the Prometheus name)."""
    labels: tuple[tuple[str, str], ...] = ()
    """This family's label names and theirs, where they differ (``token_type``: ``gen_ai_token_type``)."""
    series: Series | None = None
    """A counter whose series differ in shape from the family's (the run counts: ``error_type`` only on the
    failed ones, as OpenTelemetry's ``error.type``), read from the counters; None: the family's own series."""
    covers: tuple[str, ...] = ()
    """Other families whose counts its series hold too (the errors in the run counts): not shown under their
    own names with ``--semconv gen_ai``."""


def _invocations(runs: str, errors: str, *by: str) -> Series:
    """Runs under their GenAI name: the successful ones without ``error_type``, the failed ones by it (a sum over
    ``error_type``, absent included, is every run). ``by``: the label of the first key part (an index)."""

    def series(counters: Mapping[str, Counter[Key]], known: Known) -> Iterator[tuple[tuple[tuple[str, str], ...], float]]:
        for key, value in sorted(counters[runs].items()):
            parts = key if isinstance(key, tuple) else (key,)
            if parts[-1] == "success":
                yield tuple(zip(by, parts[:-1], strict=True)), value
        failed = COUNTERS_BY_STORED[errors]  # its error types known in advance at 0, as under its own name
        for key, value in sorted((dict.fromkeys(failed.known(known, counters), 0) | counters[errors]).items()):
            parts = key if isinstance(key, tuple) else (key,)
            yield (*zip(by, parts[:-1], strict=True), ("error_type", parts[-1])), value

    return series


@dataclass(frozen=True, kw_only=True)
class Family:
    name: str
    """The exposition name; a counter's without ``_total``."""
    help: str
    labels: tuple[str, ...] = ()
    since: str
    """The release that added it."""
    doc: str = ""
    """What the README's metric table says of the labels, when more than their names."""
    gen_ai: GenAi | None = None
    """Its name under the GenAI semantic conventions, if they have one (``--semconv gen_ai``, ``both``)."""

    @property
    def type(self) -> Literal["counter", "histogram", "gauge"]:
        raise NotImplementedError

    @property
    def exposed(self) -> str:
        """The name as a scrape shows it."""
        return self.name + "_total" if self.type == "counter" else self.name


@dataclass(frozen=True, kw_only=True)
class CounterFamily(Family):
    stored: str
    """The attribute of ``Aggregates`` and the key of the state file's aggregates."""
    observe: Callable[[Run], Iterable[tuple[Key, int]]] | None
    """The series a run adds to, and by how much; None: counted from the events, not the runs."""
    zeros: tuple[str, ...] = ()
    """Series kept at 0 before any run (stored)."""
    known: Callable[[Known, Mapping[str, Counter[Key]]], Iterable[Key]] = lambda known, counters: ()
    """Series shown at 0 while absent (not stored), from what is known in advance and the counters so far:
    every error type, every event type, both outcomes of every tool and index seen."""
    bounded: Literal["tools", "indexes"] | None = None
    """The ``BoundedLabels`` of ``Aggregates`` that bounds the first label value."""
    saturating: bool = False
    """Stops at 2**53 rather than grow past what the state file accepts."""
    exemplars: bool = False
    """Each series carries the latest run's session as its exemplar."""

    @property
    def type(self) -> Literal["counter"]:
        return "counter"


@dataclass(frozen=True, kw_only=True)
class HistogramFamily(Family):
    stored: str
    """The attribute of ``Aggregates`` and the key of the state file's aggregates."""
    bucket: str
    """Its bucket setting: ``buckets.<bucket>`` (``--config``, ``config.buckets`` in the chart)."""
    buckets: tuple[float, ...]
    """The default bounds (+Inf is always added)."""
    observe: Callable[[RunRecord], Iterable[tuple[str | None, float]]]
    """The value a run is observed with, per series (None for an unlabelled family); none when unknown."""
    series: tuple[str, ...] = ()
    """The label values of a labelled histogram (one label)."""

    @property
    def type(self) -> Literal["histogram"]:
        return "histogram"

    def series_keys(self) -> tuple[str | None, ...]:
        return self.series or (None,)


@dataclass(frozen=True, kw_only=True)
class GaugeFamily(Family):
    snapshot: str
    """The attribute of the ``Snapshot`` it shows; absent while that is None."""

    @property
    def type(self) -> Literal["gauge"]:
        return "gauge"


def _runs(run: Run) -> Iterator[tuple[Key, int]]:
    yield run.outcome, 1


def _errors(run: Run) -> Iterator[tuple[Key, int]]:
    if run.record.failed:
        yield run.record.error_type or "", 1


def _tokens(run: Run) -> Iterator[tuple[Key, int]]:
    for kind, tokens in (("input", run.record.input_tokens), ("output", run.record.output_tokens)):
        if tokens is not None:
            yield kind, tokens


def _tool_calls(run: Run) -> Iterator[tuple[Key, int]]:
    for call in run.record.tool_calls:
        yield (run.tool(call.name), "result" if call.has_result else "no_result"), 1


def _skipped(run: Run) -> Iterator[tuple[Key, int]]:
    for index_id in run.record.skipped_index_ids:
        yield run.index(index_id), 1


def _index_runs(run: Run) -> Iterator[tuple[Key, int]]:
    for index_id in run.indexes:
        yield (index_id, run.outcome), 1


def _index_errors(run: Run) -> Iterator[tuple[Key, int]]:
    if run.record.failed:
        for index_id in run.indexes:
            yield (index_id, run.record.error_type or ""), 1


def _refused(run: Run) -> Iterator[tuple[Key, int]]:
    for name in run.record.refused:
        yield name, 1


def _one(value: float | None) -> Iterator[tuple[str | None, float]]:
    if value is not None:
        yield None, value


FAMILIES: tuple[Family, ...] = (
    CounterFamily(
        name="llamacloud_chat_runs",
        help="Finished chat runs by outcome",
        labels=("outcome",),
        doc="`outcome` = success, error",
        since="0.1.0",
        stored="runs",
        observe=_runs,
        zeros=("success", "error"),
        exemplars=True,
        gen_ai=GenAi(
            "gen_ai_invoke_agent_invocations",
            "gen_ai.invoke_agent.invocations",
            "{invocation}",
            series=_invocations("runs", "errors"),
            covers=("llamacloud_chat_run_errors",),
        ),
    ),
    CounterFamily(
        name="llamacloud_chat_run_errors",
        help="Failed chat runs by classified error type",
        labels=("error_type",),
        since="0.1.0",
        stored="errors",
        observe=_errors,
        known=lambda known, counters: known.error_types,
    ),
    HistogramFamily(
        name="llamacloud_chat_run_duration_seconds",
        help="Duration of finished chat runs",
        since="0.1.0",
        stored="duration",
        bucket="duration",
        buckets=DURATION_BUCKETS,
        observe=lambda r: _one(r.duration_seconds),
        gen_ai=GenAi("gen_ai_invoke_agent_duration_seconds", "gen_ai.invoke_agent.duration", "s"),
    ),
    HistogramFamily(
        name="llamacloud_chat_run_tokens",
        help="Tokens per finished chat run",
        labels=("token_type",),
        doc="`token_type` = input, output",
        since="0.1.0",
        stored="tokens",
        bucket="tokens",
        buckets=TOKEN_BUCKETS,
        series=("input", "output"),
        observe=lambda r: ((k, v) for k, v in (("input", r.input_tokens), ("output", r.output_tokens)) if v is not None),
        gen_ai=GenAi("gen_ai_client_token_usage", "gen_ai.client.token.usage", "{token}", (("token_type", "gen_ai_token_type"),)),
    ),
    CounterFamily(
        name="llamacloud_chat_tokens",
        help="Tokens used by finished chat runs",
        labels=("token_type",),
        since="0.1.0",
        stored="tokens_total",
        observe=_tokens,
        zeros=("input", "output"),
        saturating=True,
    ),
    HistogramFamily(
        name="llamacloud_chat_run_turns",
        help="Turns per finished chat run",
        since="0.1.0",
        stored="turns",
        bucket="turns",
        buckets=TURN_BUCKETS,
        observe=lambda r: _one(r.turns),
        # a turn is one model answer: one inference call
        gen_ai=GenAi("gen_ai_invoke_agent_inference_calls", "gen_ai.invoke_agent.inference_calls", "{inference_call}"),
    ),
    HistogramFamily(
        name="llamacloud_chat_run_tool_calls",
        help="Tool calls per finished chat run",
        since="0.1.0",
        stored="tool_calls_per_run",
        bucket="tool_calls",
        buckets=TOOL_CALL_BUCKETS,
        observe=lambda r: _one(len(r.tool_calls)),
        gen_ai=GenAi("gen_ai_invoke_agent_tool_calls", "gen_ai.invoke_agent.tool_calls", "{tool_call}"),
    ),
    CounterFamily(
        name="llamacloud_chat_tool_calls",
        help="Tool calls by tool, and whether a result came back",
        labels=("tool", "outcome"),
        doc="`tool`, `outcome` = result, no_result",
        since="0.1.0",
        stored="tool_calls",
        observe=_tool_calls,
        bounded="tools",
        known=lambda known, counters: ((tool, o) for tool in _firsts(counters["tool_calls"]) for o in TOOL_OUTCOMES),
    ),
    CounterFamily(
        name="llamacloud_chat_skipped_index_queries",
        help="Index queries a run could not make",
        labels=("index_id",),
        since="0.1.0",
        stored="skipped_index_queries",
        observe=_skipped,
        bounded="indexes",
    ),
    CounterFamily(
        name="llamacloud_chat_index_runs",
        help="Finished chat runs by index of their session (a session bound to two counts under both; "
        "_none: bound to none) and outcome",
        labels=("index_id", "outcome"),
        doc="`index_id`, `outcome`: each run under every index its session is bound to (a sum over `index_id` "
        "is not the run total), unbound sessions under `_none`",
        since="0.3.0",
        stored="index_runs",
        observe=_index_runs,
        bounded="indexes",
        known=lambda known, counters: ((i, o) for i in _firsts(counters["index_runs"]) for o in OUTCOMES),
        gen_ai=GenAi(
            "gen_ai_invoke_agent_data_source_invocations",
            "gen_ai.invoke_agent.data_source.invocations",
            "{invocation}",
            series=_invocations("index_runs", "index_errors", "gen_ai_data_source_id"),
            covers=("llamacloud_chat_index_run_errors",),
        ),
    ),
    CounterFamily(
        name="llamacloud_chat_index_run_errors",
        help="Failed chat runs by index of their session and classified error type",
        labels=("index_id", "error_type"),
        doc="`index_id`, `error_type`: the failed runs of the same",
        since="0.3.0",
        stored="index_errors",
        observe=_index_errors,
        bounded="indexes",
        known=lambda known, counters: ((i, t) for i in _firsts(counters["index_runs"]) for t in known.error_types),
    ),
    CounterFamily(
        name="llamacloud_chat_events",
        help="Chat events by type",
        labels=("event_type",),
        doc="`event_type` (unknown types: `_unknown`)",
        since="0.1.0",
        stored="events",
        observe=None,
        known=lambda known, counters: EVENT_TYPES,
    ),
    GaugeFamily(
        name="llamacloud_chat_runs_in_progress",
        help="Sessions whose history ends in an unfinished run",
        since="0.1.0",
        snapshot="runs_in_progress",
    ),
    GaugeFamily(
        name="llamacloud_chat_oldest_run_in_progress_seen_timestamp_seconds",
        help="When the collector first saw the oldest unfinished run (events carry no timestamps); "
        "absent when none is in progress",
        doc="(when the collector first saw the oldest unfinished run; absent when none)",
        since="0.1.0",
        snapshot="oldest_in_progress_since",
    ),
    CounterFamily(
        name="llamacloud_collector_invalid_values",
        help="Values refused from otherwise valid payloads (negative, NaN, infinite, over 2^53), by field; "
        "the run's field is unknown.",
        labels=("field",),
        since="0.1.0",
        stored="invalid_values",
        observe=_refused,
    ),
)
"""In the order of the exposition. The last is a self-metric that the aggregates keep (by field)."""

CHAT = tuple(f for f in FAMILIES if f.name.startswith("llamacloud_chat_"))
"""The families hidden until the first full sync."""
COUNTERS = tuple(f for f in FAMILIES if isinstance(f, CounterFamily))
COUNTERS_BY_STORED = {f.stored: f for f in COUNTERS}
HISTOGRAMS = tuple(f for f in FAMILIES if isinstance(f, HistogramFamily))
GAUGES = tuple(f for f in FAMILIES if isinstance(f, GaugeFamily))
DEFAULT_BUCKETS = {f.bucket: f.buckets for f in HISTOGRAMS}
