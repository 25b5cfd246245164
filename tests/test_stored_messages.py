"""A damaged state file is one line that says what is wrong in it: each impossible stored aggregate, and
the exact message the operator reads (the file is then moved aside and its readable totals kept)."""

from __future__ import annotations

import copy

import pytest

from collector.aggregates import MAX_COUNT, Aggregates, Buckets, StoredValueError, UnknownField, count, finite
from collector.derive import RunRecord, ToolCall

pytestmark = pytest.mark.tier("unit")

BUCKETS = Buckets({"duration": (1.0, 10.0), "tokens": (10.0, 100.0), "turns": (1.0, 4.0), "tool_calls": (0.0, 2.0)})


def good() -> dict:
    data = Aggregates(BUCKETS, 5)
    data.add_runs([RunRecord(True, "auth", 2.0, 20, 30, 2, (ToolCall("t", True),), ("i",))], "s", 7.0, ("k",))
    return data.to_dict()


def changed(path: tuple, value: object) -> dict:
    data = copy.deepcopy(good())
    *parents, last = path
    target = data
    for key in parents:
        target = target[key]
    target[last] = value
    return data


BROKEN = {
    "not a mapping": ([1], "aggregates are not a mapping"),
    "counter not pairs": (changed(("runs",), [["success"]]), "runs: not a list of [key, value] pairs"),
    "counter not a list": (changed(("errors",), {"a": 1}), "errors: not a list of [key, value] pairs"),
    "counter key": (changed(("runs",), [[7, 1]]), "runs: key '7' is not a label value"),
    "empty key tuple": (changed(("tool_calls",), [[[], 1]]), "tool_calls: key '[]' is not a label value"),
    "mixed key tuple": (changed(("tool_calls",), [[["t", 1], 1]]), "tool_calls: key \"['t', 1]\" is not a label value"),
    "negative count": (changed(("runs",), [["success", -1]]), "runs: '-1' is not a count"),
    "bool count": (changed(("events",), [["stop", True]]), "events: 'True' is not a count"),
    "count over 2**53": (changed(("runs",), [["success", MAX_COUNT + 1]]), f"runs: '{MAX_COUNT + 1}' is not a count"),
    "resets": (changed(("history_resets",), -2), "history_resets: '-2' is not a count"),
    "histogram not a mapping": (changed(("duration",), [1]), "duration: not a histogram"),
    "histogram without total": (changed(("turns",), {"bounds": [1.0], "counts": [0, 0]}), "turns: not a histogram"),
    "labelled not a mapping": (changed(("tokens",), [1]), "tokens is not a mapping"),
    "no bounds": (changed(("duration", "bounds"), []), "duration: no bounds"),
    "bounds not a list": (changed(("duration", "bounds"), 5), "duration: no bounds"),
    "equal bounds": (changed(("duration", "bounds"), [1.0, 1.0]), "duration: bounds are not finite and increasing"),
    "decreasing third": (changed(("duration", "bounds"), [1.0, 10.0, 5.0]), "duration: bounds are not finite and increasing"),
    "nan bound": (changed(("duration", "bounds"), [float("nan"), 10.0]), "duration: bounds are not finite and increasing"),
    "text bound": (changed(("duration", "bounds"), ["1", 10.0]), "duration: bounds are not finite and increasing"),
    "counts length": (changed(("duration", "counts"), [0, 1]), "duration: 3 counts expected"),
    "bad bucket count": (changed(("tokens", "input", "counts"), [0, -1, 0]), "tokens.input: '-1' is not a count"),
    "infinite sum": (changed(("duration", "total"), float("inf")), "duration: 'inf' is not a finite non-negative number"),
    "text sum": (changed(("duration", "total"), "2"), "duration: '2' is not a finite non-negative number"),
    "other bounds": (changed(("duration", "bounds"), [1.0, 20.0]), "duration: stored bounds differ from the configured ones"),
    "labels not a pair": (changed(("indexes",), [["i"]]), "indexes: not the admitted label values and a dropped count"),
    "labels not strings": (changed(("tools",), [[1], 0]), "tools: not the admitted label values and a dropped count"),
    "labels not a list": (changed(("tools",), [{"t": 1}, 0]), "tools: not the admitted label values and a dropped count"),
    "dropped": (changed(("tools",), [["t"], -1]), "tools: '-1' is not a count"),
    "marks": (changed(("run_marks",), [1]), "run_marks is not a mapping"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_impossible_stored_aggregate_is_one_exact_message(case):
    data, message = BROKEN[case]
    with pytest.raises(StoredValueError) as error:
        Aggregates.from_dict(data, BUCKETS, 5)
    assert str(error.value) == message


def test_a_field_of_a_newer_release_is_named():
    with pytest.raises(UnknownField) as error:
        Aggregates.from_dict({**good(), "zeta": 1, "alpha": 2}, BUCKETS, 5)
    assert str(error.value) == "aggregates field 'alpha'"  # the first, sorted


def test_what_an_older_file_lacks_starts_empty_and_the_rest_still_loads():
    data = good()
    for key in ("history_resets", "tools", "indexes", "duration", "run_marks"):
        del data[key]
    del data["tokens"]["input"]  # a labelled histogram with one kind missing: the other still loads
    loaded = Aggregates.from_dict(data, BUCKETS, 5)
    assert loaded.history_resets == 0 and loaded.tools.admitted == set() and loaded.tools.dropped == 0
    assert loaded.indexes.admitted == set() and loaded.indexes.dropped == 0 and loaded.run_marks == {}
    assert loaded.duration.count == 0 and loaded.tokens["input"].count == 0
    assert loaded.tokens["output"].count == 1 and loaded.turns.count == 1 and loaded.tool_calls_per_run.count == 1
    assert loaded.index_runs == {("k", "error"): 1} and loaded.errors == {"auth": 1}
    assert loaded.tool_calls == {("t", "result"): 1} and loaded.label_limit == 5


def test_a_different_bounds_file_loads_when_asked_to_and_keeps_its_own_bounds():
    data = changed(("duration", "bounds"), [1.0, 20.0])
    loaded = Aggregates.from_dict(data, BUCKETS, 5, same_bounds=False)
    assert loaded.duration.bounds == (1.0, 20.0) and loaded.duration.count == 1


def test_the_edges_of_a_stored_count_and_sum():
    assert count(MAX_COUNT, "x") == MAX_COUNT and count(0, "x") == 0
    assert finite(MAX_COUNT, "x") == float(MAX_COUNT) and finite(0, "x") == 0.0
    with pytest.raises(StoredValueError, match=r"^x: 'nan' is not a finite"):
        finite(float("nan"), "x")
    with pytest.raises(StoredValueError, match=r"^x: '.{40}' is not a count$"):
        count("a" * 100, "x")  # the value shown is cut to 40 characters
    with pytest.raises(StoredValueError):
        finite(MAX_COUNT * 2.0, "x")
    with pytest.raises(StoredValueError):
        finite(True, "x")
