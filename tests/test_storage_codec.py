"""One codec for what is stored (issue 28, item 2): every stored field declares its rule, the codec is generated
from the fields, every stored type round-trips through a real file and a restart with every field set, and the
cycle's journal covers every field of ``CollectorState`` not declared transient.

A new stored field needs its declaration (``field(default=..., metadata=stored(RULE))``) and the place its value
comes from; everything here follows from the declaration, and names the field when something does not.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.aggregates import MAX_COUNT, Aggregates, Buckets, StoredValueError, UnknownField
from collector.derive import RunRecord, ToolCall
from collector.errors import StateError
from collector.llamacloud.bounds import session_id_problem
from collector.state import RETIRED_DROPS, CollectorState, LastRun, SessionState, SessionTable, journal_mode, key_ids
from collector.storage import rules
from collector.storage.records import META, SESSION, Meta, decode_session, encode_meta, encode_session
from collector.storage.sqlite import NewerStateFile, SqliteStore

pytestmark = pytest.mark.tier("unit")

BUCKETS = Buckets({"duration": (1.0, 10.0), "tokens": (10.0, 100.0), "turns": (1.0, 4.0), "tool_calls": (0.0, 2.0)})
RULES = [("timeout", "time")]
NOW = 1_790_000_000.0

STORED_TYPES = (SessionState, LastRun, Meta)
"""Every dataclass the state file holds (``LastRun`` inside a session's row)."""


# -- every field declares its rule ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", STORED_TYPES, ids=lambda c: c.__name__)
def test_every_stored_field_declares_its_rule(cls):
    undeclared = []
    for f in fields(cls):
        try:
            rules.declaration(cls, f.name)
        except TypeError:
            undeclared.append(f"{cls.__name__}.{f.name}")
    assert undeclared == [], f"stored fields without a rule: {undeclared} (declare each with metadata=stored(RULE))"


def test_a_new_field_without_a_rule_is_named_before_anything_is_stored():
    @dataclass(frozen=True)
    class Grown(SessionState):
        created_at: float | None = None

    with pytest.raises(TypeError, match=r"^Grown\.created_at has no storage rule"):
        rules.Codec(Grown, "session")


def test_the_codec_reads_and_writes_every_field_and_nothing_else():
    assert SESSION.names == {f.name for f in fields(SessionState)}
    assert META.names == {f.name for f in fields(Meta)}
    row = json.loads(encode_session(SessionState("s", "t")))
    assert set(row) == {f.name for f in fields(SessionState)}  # every field written, by name
    with pytest.raises(UnknownField, match=r"^session field 'born_at'$"):
        decode_session(json.dumps({**row, "born_at": 1}))
    with pytest.raises(UnknownField, match=r"^session job field 'zeta'$"):
        decode_session(json.dumps({**row, "job": {"zeta": 1}}))


def test_what_a_retired_row_drops_is_declared_with_the_field():
    assert RETIRED_DROPS == {"title": None, "job": None}
    state = CollectorState(Aggregates(BUCKETS, 5))
    state.put(SessionState("s", "t", title="x", job=LastRun(turns=1.0), cursor=3))
    state.drop("s")
    assert state.retired["s"] == SessionState("s", "t", cursor=3)


# -- the same rules both ways -----------------------------------------------------------------------------

IMPOSSIBLE: list[tuple[rules.Rule, object]] = [
    (rules.TEXT, None),
    (rules.TEXT, 7),
    (rules.TEXT, "x" * (rules.MAX_TEXT + 1)),
    (rules.SESSION_ID, ""),
    (rules.SESSION_ID, "a\x00b"),
    (rules.SESSION_ID, ".."),
    (rules.SESSION_ID, "s" * 257),
    (rules.COUNT, -1),
    (rules.COUNT, True),
    (rules.COUNT, 1.0),
    (rules.COUNT, MAX_COUNT + 1),
    (rules.MEASURE, float("nan")),
    (rules.MEASURE, float("inf")),
    (rules.MEASURE, -0.5),
    (rules.MEASURE, "1"),
    (rules.FLAG, 1),
    (rules.FLAG, None),
    (rules.TEXTS, ["a", 1]),
    (rules.TEXTS, "ab"),
    (rules.optional(rules.COUNT), -1),
    (rules.fixed(rules.COUNT, rules.COUNT, shape="[a, b]"), [1]),
    (rules.fixed(rules.COUNT, rules.COUNT, shape="[a, b]"), [1, -1]),
    (rules.VERSION_TEXT, -1),
    (rules.FLAG_TEXT, 2),
    (rules.MEASURE_TEXT, float("nan")),
    (rules.JSON_TEXT, float("nan")),
]


@pytest.mark.parametrize(("rule", "value"), IMPOSSIBLE, ids=lambda x: repr(x)[:30])
def test_what_a_restart_would_refuse_is_never_written(rule, value):
    """Each rule refuses to write what it refuses to read (for a JSON rule, the same value both ways)."""
    with pytest.raises(StoredValueError) as written:
        rule.encode(value, "x")
    assert str(written.value).startswith("x: ")
    if not isinstance(rule, (rules.VersionText, rules.FlagText, rules.MeasureText, rules.JsonText)):
        with pytest.raises(StoredValueError) as read:
            rule.decode(value, "x")
        assert str(read.value) == str(written.value)


def test_a_session_a_restart_would_refuse_fails_the_write_and_the_file_keeps_its_last_state(tmp_path):
    store = SqliteStore(tmp_path / "state.db", BUCKETS, RULES, 50, clock=lambda: NOW)
    store.load()
    state = CollectorState(aggregates(), synced=True)
    state.put(SessionState("good", "t", cursor=2))
    store.save(state)
    state.put(SessionState("bad", "t", cursor=-1))  # no release writes this: a bug upstream of the store
    with pytest.raises(StateError, match=r"session 'bad' not written: session cursor: '-1' is not a count"):
        store.save(state)
    store.close()
    again = SqliteStore(tmp_path / "state.db", BUCKETS, RULES, 50).load()
    assert again is not None and set(again.sessions) == {"good"}


def test_a_meta_value_this_release_does_not_know_means_a_newer_release_wrote_the_file(tmp_path):
    db = tmp_path / "state.db"
    store = SqliteStore(db, BUCKETS, RULES, 50, clock=lambda: NOW)
    store.load()
    state = CollectorState(aggregates(), synced=True)
    state.put(SessionState("s", "t"))
    store.save(state)
    store.close()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO meta VALUES ('fingerprints', '{}')")
    conn.close()
    with pytest.raises(NewerStateFile, match="holds a meta field 'fingerprints' that this release does not know"):
        SqliteStore(db, BUCKETS, RULES, 50).load()


# -- every stored type, every field set, through a real file and a restart ------------------------------

text = st.text(st.characters(codec="utf-8"), max_size=12)
measure = st.floats(0.0, float(MAX_COUNT), allow_nan=False, allow_infinity=False)


def strategy(rule: rules.Rule, where: str) -> st.SearchStrategy[Any]:
    """Any value ``rule`` stores; a rule this test does not know fails, naming the field."""
    if isinstance(rule, rules.Text):
        return text
    if isinstance(rule, rules.SessionId):
        printable = st.characters(whitelist_categories=("L", "M", "N", "P", "S"))
        return st.text(printable, min_size=1, max_size=12).filter(lambda s: session_id_problem(s) is None)
    if isinstance(rule, (rules.Count, rules.VersionText)):
        return st.integers(1, MAX_COUNT)  # 0 is a count's default: it reads back whatever the codec does
    if isinstance(rule, (rules.Measure, rules.MeasureText)):
        return measure
    if isinstance(rule, (rules.Flag, rules.FlagText)):
        return st.booleans()
    if isinstance(rule, rules.Nullable):
        return strategy(rule.rule, where)  # never None: None is every optional field's default
    if isinstance(rule, rules.Texts):
        return st.lists(text, min_size=1, max_size=3).map(tuple)
    if isinstance(rule, rules.Fixed):
        return st.tuples(*(strategy(r, where) for r in rule.rules))
    if isinstance(rule, rules.Record):
        return records(rule.cls)
    if isinstance(rule, rules.JsonText):
        return st.dictionaries(text, st.integers(0, 9) | text, min_size=1, max_size=3)
    pytest.fail(f"{where}: no strategy for a {type(rule).__name__} rule; add one to strategy() in this test")


def default(f: Field[Any]) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def records(cls: type) -> st.SearchStrategy[Any]:
    """``cls`` with every field set to other than its default."""
    parts = {}
    for f in fields(cls):
        values = strategy(rules.declaration(cls, f.name).rule, f"{cls.__name__}.{f.name}")
        if f.default is not MISSING or f.default_factory is not MISSING:
            values = values.filter(other_than(default(f)))
        parts[f.name] = values
    return st.builds(cls, **parts)


def other_than(value: object) -> Any:
    return lambda v: v != value


def assert_same(wrote: object, read: object, where: str) -> None:
    """Equal field by field, and of the same type (a count read back as a float is a change)."""
    assert type(read) is type(wrote), f"{where}: wrote a {type(wrote).__name__}, read a {type(read).__name__}"
    if is_dataclass(wrote):
        for f in fields(wrote):
            assert_same(getattr(wrote, f.name), getattr(read, f.name), f"{where}.{f.name}")
    elif isinstance(wrote, tuple):
        assert len(read) == len(wrote), where  # type: ignore[arg-type]
        for i, (a, b) in enumerate(zip(wrote, read, strict=True)):  # type: ignore[call-overload]
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert read == wrote, f"{where}: wrote {wrote!r}, read {read!r}"


def aggregates(tool: str = "t") -> Aggregates:
    agg = Aggregates(BUCKETS, 50)
    agg.add_runs([RunRecord(True, "timeout", 2.0, 5, 6, 2, (ToolCall(tool, True),), ("i",))], "s", NOW, ("k",))
    return agg


def normal(data: object) -> object:
    return json.loads(json.dumps(data))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(records(SessionState), min_size=3, max_size=3, unique_by=lambda s: s.session_id),
    st.integers(2, 99),
    measure.filter(lambda t: t > 0),
)
def test_every_stored_type_round_trips_through_a_real_file_and_a_restart(three, derivation, saved_at):
    watched, prior, retired = three
    state = CollectorState(
        aggregates(),
        synced=True,
        floor=aggregates("f"),
        prior=SessionTable({prior.session_id: prior}),
        histogram_floor=aggregates("h"),
        replay={watched.session_id},
    )
    state.put(watched)
    state.retired[retired.session_id] = retired  # a retired row as the store keeps it: every field set here too
    with tempfile.TemporaryDirectory() as tmp, mock.patch("collector.storage.sqlite.DERIVATION_VERSION", derivation):
        db = Path(tmp) / "state.db"
        first = SqliteStore(db, BUCKETS, RULES, 50, clock=lambda: saved_at, project_id="p-1")
        assert first.load() is None
        first.save(state)
        first.close()
        second = SqliteStore(db, BUCKETS, RULES, 50)  # a restart: a new store on the file, which names its project
        loaded = second.load()
        read_retired = second.retired_session(retired.session_id)
        second.close()
    assert loaded is not None
    assert set(loaded.sessions) == {watched.session_id} and set(loaded.prior) == {prior.session_id}
    assert_same(watched, loaded.sessions[watched.session_id], "sessions")
    assert_same(prior, loaded.prior[prior.session_id], "prior")
    assert_same(retired, read_retired, "retired")
    assert loaded.synced and loaded.replay == {watched.session_id}
    for name in ("aggregates", "floor", "histogram_floor"):
        assert getattr(loaded, name).to_dict() == getattr(state, name).to_dict(), name
    wrote, read = first.meta, second.meta
    assert wrote is not None and read is not None
    for f in fields(Meta):
        assert getattr(wrote, f.name) != default(f), f"Meta.{f.name} is left at its default: set it in this test"
        assert normal(getattr(read, f.name)) == normal(getattr(wrote, f.name)), f"Meta.{f.name}"
    assert encode_meta(read) == encode_meta(wrote)
    assert second.project_id == "p-1"


# -- the cycle's journal covers every field not declared transient ---------------------------------------


def full_state() -> CollectorState:
    """A committed state with every field set."""
    state = CollectorState(
        aggregates(),
        synced=True,
        floor=aggregates("f"),
        prior=SessionTable({"p": SessionState("p", "t", cursor=4)}),
        histogram_floor=aggregates("h"),
        replay={"a"},
        prior_changed=True,
    )
    state.put(SessionState("a", "t", cursor=1))
    state.put(SessionState("b", "t", cursor=2))
    state.drop("b")
    state.commit()
    return state


def seen(state: CollectorState) -> dict[str, object]:
    """Every field a rollback restores, as a value that later changes cannot reach."""
    out: dict[str, object] = {}
    for f in fields(CollectorState):
        if journal_mode(f) in ("transient", "per_cycle"):
            continue
        value = getattr(state, f.name)
        out[f.name] = value.to_dict() if isinstance(value, Aggregates) else normal_copy(value)
    return out


def normal_copy(value: object) -> object:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, set):
        return set(value)
    return value


def change_in_place(value: object) -> bool:
    """Change a field's working value in place as a cycle might; False when it cannot be (immutable)."""
    if isinstance(value, Aggregates):
        value.add_runs([RunRecord(False, None, 1.0, 1, 1, 1, (), ())], "x", NOW)
    elif isinstance(value, (dict, SessionTable)):
        value["x"] = SessionState("x", "t")
    elif isinstance(value, set):
        value.add("x")
    else:
        return False
    return True


OTHER: dict[str, Any] = {
    "bool": lambda v: not v,
    "Aggregates": lambda v: Aggregates(BUCKETS, 50),
    "Aggregates | None": lambda v: None,
    "SessionTable": lambda v: SessionTable(),
    "set[str]": lambda v: {"y"},
}
"""A different value of each type a journaled field has, as a cycle might set it."""


@pytest.mark.parametrize("name", [f.name for f in fields(CollectorState) if journal_mode(f) != "transient"])
def test_a_rollback_restores_every_field_not_declared_transient(name):
    f = next(f for f in fields(CollectorState) if f.name == name)
    mode = journal_mode(f)
    state = full_state()
    before = seen(state)
    if mode == "copied":
        kind = str(f.type)
        assert kind in OTHER, f"CollectorState.{name} ({kind}): add a value of this type to OTHER in this test"
        state.begin()
        change_in_place(getattr(state, name))
        state.rollback()
        assert seen(state) == before, f"CollectorState.{name} changed in place is not rolled back"
        state.begin()
        setattr(state, name, OTHER[kind](getattr(state, name)))
        state.rollback()
        assert seen(state) == before, f"CollectorState.{name} set anew is not rolled back"
    elif mode == "keyed":
        state.begin()
        table = getattr(state, name)
        for sid in list(table):
            state._set_in(name, sid, None)
        state._set_in(name, "new", SessionState("new", "t"))
        state.rollback()
        assert seen(state) == before, f"CollectorState.{name} changed key by key is not rolled back"
    else:
        assert mode == "per_cycle"
        state.begin()
        assert getattr(state, name) == default(f), f"CollectorState.{name} does not start empty in a cycle"
        change_in_place(getattr(state, name))
        state.rollback()
        assert getattr(state, name) == default(f), f"CollectorState.{name} is not emptied by a rollback"


def test_only_the_store_and_the_journal_itself_are_transient():
    """Transient is the exception, declared with its reason: a new field is journaled unless declared so."""
    transient = {f.name for f in fields(CollectorState) if journal_mode(f) == "transient"}
    assert transient == {"archive", "_undo", "_saved"}


def test_a_field_of_unknown_journal_mode_is_named():
    @dataclass
    class Grown:
        late: object = field(default=None, metadata={"collector.journal": "sometimes"})

    with pytest.raises(TypeError, match=r"^CollectorState\.late: journal mode 'sometimes'"):
        journal_mode(fields(Grown)[0])


def test_a_committed_cycle_keeps_what_it_did():
    state = full_state()
    work = state.begin()
    work.put(replace(work.sessions["a"], cursor=9))
    work.synced = False
    work.commit()
    assert state.sessions["a"].cursor == 9 and not state.synced and set(key_ids(state.changed)) == {"a"}
