"""The table of chat families (``collector.families``) drives every place a family lives; forgetting one of
them fails here, naming the family: DESIGN's contract, the rendering, the storage, the bucket settings, the
README and the tests' truth."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from collector.aggregates import Aggregates, Buckets
from collector.derive import RunRecord, ToolCall
from collector.families import CHAT, COUNTERS, FAMILIES, HISTOGRAMS, CounterFamily, HistogramFamily
from collector.metrics import SnapshotCollector
from collector.settings import BucketSettings, Settings
from collector.simulator.world import RunTruth
from collector.state import CollectorState, PollStatus, one_project, take_snapshot
from collector.wiring import wire
from scripts.families_table import with_table
from tests.helpers import DESIGN_BUCKETS, record

pytestmark = pytest.mark.tier("unit")

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT.parent / "shared" / "DESIGN.md"
ROW = re.compile(r"^\| `(llamacloud_chat_[a-z_]+)` \| (counter|histogram|gauge) \|([^|]*)\|", re.M)

RUN = RunRecord(
    failed=True,
    error_type="timeout",
    duration_seconds=2.5,
    input_tokens=1200,
    output_tokens=150,
    turns=2,
    tool_calls=(ToolCall("search", True),),
    skipped_index_ids=("idx-2",),
    refused=("turns",),
)
"""A run with every field known: each family observes something of it."""


def ids(families) -> list[str]:
    return [f.name for f in families]


def counted() -> Aggregates:
    aggregates = Aggregates(Buckets(), 10)
    aggregates.add_runs([RUN], "s-1", 42.0, index_ids=("idx-1",))
    aggregates.add_events({"stop": 1})
    return aggregates


CONTRACT = {
    "llamacloud_chat_runs_total": ("counter", ("outcome",)),
    "llamacloud_chat_run_errors_total": ("counter", ("error_type",)),
    "llamacloud_chat_run_duration_seconds": ("histogram", ()),
    "llamacloud_chat_run_tokens": ("histogram", ("token_type",)),
    "llamacloud_chat_tokens_total": ("counter", ("token_type",)),
    "llamacloud_chat_run_turns": ("histogram", ()),
    "llamacloud_chat_run_tool_calls": ("histogram", ()),
    "llamacloud_chat_tool_calls_total": ("counter", ("tool", "outcome")),
    "llamacloud_chat_skipped_index_queries_total": ("counter", ("index_id",)),
    "llamacloud_chat_events_total": ("counter", ("event_type",)),
    "llamacloud_chat_index_runs_total": ("counter", ("index_id", "outcome")),
    "llamacloud_chat_index_run_errors_total": ("counter", ("index_id", "error_type")),
    "llamacloud_chat_runs_in_progress": ("gauge", ()),
    "llamacloud_chat_oldest_run_in_progress_seen_timestamp_seconds": ("gauge", ()),
}
"""DESIGN §5's chat families, typed out (users' dashboards depend on them): the table must keep each."""


def test_the_table_keeps_the_contract_name_type_and_label_names():
    table = {f.exposed: f for f in CHAT}
    for name, (kind, labels) in CONTRACT.items():
        assert name in table, f"{name}: DESIGN §5 names it, collector/families.py does not"
        assert (table[name].type, table[name].labels) == (kind, labels), name


@pytest.mark.skipif(not DESIGN.exists(), reason="DESIGN.md lives beside the repository, not in it")
def test_the_contract_here_is_designs():
    rows = ROW.findall(DESIGN.read_text())
    design = {name: kind for name, kind, _ in rows if not name.startswith("llamacloud_chat_session_")}
    assert design == {name: kind for name, (kind, _) in CONTRACT.items()}


def test_the_default_buckets_are_designs():
    for family in HISTOGRAMS:
        if family.bucket in DESIGN_BUCKETS:
            assert family.buckets == DESIGN_BUCKETS[family.bucket], family.name


@pytest.mark.parametrize("family", HISTOGRAMS, ids=ids(HISTOGRAMS))
def test_every_histogram_has_its_bucket_setting_and_it_reaches_the_aggregates(family: HistogramFamily):
    assert family.bucket in BucketSettings.model_fields, f"{family.name}: no buckets.{family.bucket} setting"
    bounds = (*family.buckets, family.buckets[-1] * 2 + 1)
    settings = Settings(buckets=BucketSettings(**{family.bucket: bounds}))
    buckets = wire(settings).poll.buckets
    assert buckets[family.bucket] == bounds, family.name
    assert all(h.bounds == bounds for h in Aggregates(buckets, 5).histos[family.stored].values()), family.name


@pytest.mark.parametrize("family", [f for f in FAMILIES if not isinstance(f, CounterFamily) or f.observe], ids=lambda f: f.name)
def test_every_family_observes_a_run(family):
    """A family that a run with every field known leaves empty is observed from nothing."""
    aggregates, snapshot = counted(), None
    if isinstance(family, HistogramFamily):
        assert sum(h.count for h in aggregates.histos[family.stored].values()) >= 1, family.name
    elif isinstance(family, CounterFamily):
        assert sum(aggregates.counters[family.stored].values()) >= 1, family.name
    else:
        snapshot = take_snapshot(CollectorState(aggregates), PollStatus(), 5)
        assert hasattr(snapshot, family.snapshot), family.name


def test_every_family_is_rendered_with_its_help_and_type():
    state = CollectorState(counted(), synced=True)
    registry = CollectorRegistry()
    snapshot = take_snapshot(state, PollStatus(), 5)
    registry.register(
        SnapshotCollector(
            lambda: one_project(snapshot),
            interval=30,
            expose_titles=False,
            shard=0,
            total_shards=1,
            error_types=(),
            semconv="llamacloud",
        )
    )
    text = generate_latest(registry).decode()
    for family in FAMILIES:
        assert f"# HELP {family.exposed} {family.help}" in text, family.name
        assert f"# TYPE {family.exposed} {family.type}" in text, family.name


@pytest.mark.parametrize("family", [*COUNTERS, *HISTOGRAMS], ids=lambda f: f.name)
def test_every_family_is_stored_and_read_back(family):
    aggregates = counted()
    back = Aggregates.from_dict(aggregates.to_dict(), Buckets(), 10)
    if isinstance(family, HistogramFamily):
        for key, hist in aggregates.histos[family.stored].items():
            loaded = back.histos[family.stored][key]
            assert (loaded.counts, loaded.total, loaded.marks) == (hist.counts, hist.total, hist.marks), family.name
    else:
        assert back.counters[family.stored] == aggregates.counters[family.stored], family.name


@pytest.mark.parametrize("family", HISTOGRAMS, ids=ids(HISTOGRAMS))
def test_a_family_added_since_a_file_was_written_starts_empty_and_rebuckets_nothing(family):
    """A family keeps its own bounds in the state file: one missing from an older file (added since) starts
    empty, and the others are not re-derived."""
    stored = counted().to_dict()
    del stored[family.stored]
    loaded = Aggregates.from_dict(stored, Buckets(), 10, same_bounds=False)
    assert not loaded.bounds_changed(), family.name
    assert all(h.count == 0 for h in loaded.histos[family.stored].values()), family.name
    others = [h.count for f in HISTOGRAMS if f is not family for h in loaded.histos[f.stored].values()]
    assert others and all(c >= 0 for c in others)
    assert loaded.runs == counted().runs


@pytest.mark.parametrize("family", HISTOGRAMS, ids=ids(HISTOGRAMS))
def test_the_tests_truth_observes_every_histogram(family):
    """``tests.helpers.record``, the simulated run as it must be derived, gives each histogram a value."""
    truth = RunTruth("s", True, "timeout", 2500.0, 1200, 150, 2, (("search", True),), ("idx-2",), ("idx-1",))
    assert list(family.observe(record(truth))), f"{family.name}: tests/helpers.py record() gives it nothing"


def test_the_readme_metric_table_is_generated_from_the_table():
    readme = (ROOT / "README.md").read_text()
    assert with_table(readme) == readme, "run python scripts/generate.py"


def test_names_are_unique_and_stored_names_too():
    assert len({f.name for f in FAMILIES}) == len(FAMILIES)
    stored = [f.stored for f in FAMILIES if isinstance(f, (CounterFamily, HistogramFamily))]
    assert len(set(stored)) == len(stored)
