"""A hostile upstream, one test per class of bad answer, against the collector as a real process.

Each test syncs against a well-behaved API, turns one fault on, adds runs to good
sessions, lets cycles run into the fault, then turns it off. Every test asserts:
the process lives, /metrics answers, cycles keep finishing, the good sessions
are counted exactly, every chat value is finite and non-negative, peak RSS stays
under 400 MB, the fault left its mark in a counter, and no traceback was logged.
SIGTERM then ends it with status 0. Each check waits on its condition (at least
two cycles, then until it holds: on a loaded machine a cycle may be cut short),
with a generous bound; the world changes only by the test's own runs.
"""

from __future__ import annotations

import math
import signal
from collections import Counter

import httpx
import pytest

from collector.simulator.world import RunTruth
from tests.helpers import Samples, assert_samples_match, family, parse, value
from tests.hostile import HOSTILE_ID, HostileApi
from tests.stack import Processes, free_port, wait_until

pytestmark = pytest.mark.tier("process")

MAX_RSS_MB = 400
WAIT = 120.0
"""A generous bound on any wait for a condition (nothing here asserts how long a thing took)."""
SCRAPE_TIMEOUT = 10.0
"""A scrape not answered within this long failed (retried within ``WAIT``): /metrics never waits on the
upstream, and this leaves a loaded 2-core machine room."""
ARGS = (
    "--interval",
    "2",
    "--read-timeout",
    "0.5",
    "--connect-timeout",
    "0.5",
    "--max-response-bytes",
    str(4 << 20),
    "--log-format",
    "json",
)

R, E = "llamacloud_collector_api_requests_total", "llamacloud_collector_invalid_payloads_total"
# mode: (result of the cycles that meet it, a counter that must move: (name, labels))
MODES = {
    "content_length_text": ("partial", (R, {"operation": "retrieve", "code": "error"})),
    "content_length_negative": ("partial", (R, {"operation": "retrieve", "code": "error"})),
    "content_length_double": ("partial", (R, {"operation": "retrieve", "code": "error"})),
    "content_length_huge": ("partial", (E, {"operation": "retrieve"})),
    "chunk_not_hex": ("partial", (R, {"operation": "retrieve", "code": "error"})),
    "status_huge": ("partial", (R, {"operation": "retrieve", "code": "error"})),
    "status_low": ("partial", (R, {"operation": "retrieve", "code": "error"})),
    "reset": ("partial", (R, {"operation": "retrieve", "code": "error"})),
    "trickle": ("partial", ("llamacloud_collector_api_retries_total", {"operation": "retrieve", "reason": "timeout"})),
    "gzip_bomb": ("partial", (E, {"operation": "retrieve"})),
    "oversize": ("partial", (E, {"operation": "retrieve"})),
    "deep": ("partial", (E, {"operation": "retrieve"})),
    "other_session": ("partial", (E, {"operation": "retrieve"})),
    "no_content": ("partial", (E, {"operation": "retrieve"})),
    "bad_numbers": ("success", ("llamacloud_collector_invalid_values_total", {"field": "turns"})),
    "continue_first": ("success", (R, {"operation": "retrieve", "code": "200"})),
    "trailers": ("success", (R, {"operation": "retrieve", "code": "200"})),
    "list_long_id": ("partial", (E, {"operation": "list"})),
    "list_relative_ids": ("partial", (E, {"operation": "list"})),
    "list_deep": ("failure", (E, {"operation": "list"})),
    "list_endless": ("partial", (R, {"operation": "list", "code": "200"})),  # the pass never ends; it answers
}
LISTING_FAILS = {"list_deep", "list_endless"}
HOSTILE_IS_GOOD = {"continue_first", "trailers"}


@pytest.fixture
def api():
    server = HostileApi()
    port = server.start()
    server.url = f"http://127.0.0.1:{port}"
    yield server
    server.stop()


def scrape(port: int) -> Samples:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=SCRAPE_TIMEOUT)  # whatever upstream does
    response.raise_for_status()
    return parse(response.text)


def polls(samples: Samples) -> float:
    return sum(family(samples, "llamacloud_collector_polls_total").values())


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))


def truth(api: HostileApi, mode: str) -> tuple[list[RunTruth], Counter]:
    runs, events = list(api.world.runs), Counter(api.world.events)
    if mode == "bad_numbers":  # one extra run whose every usage value was refused: counted, with no value
        bound = tuple(api.world.sessions[HOSTILE_ID].index_ids or ())  # it counts under its session's indexes
        runs.append(RunTruth(HOSTILE_ID, False, None, None, None, None, None, (), (), bound))
        events.update({"user_input": 1, "stop": 1})
    return runs, events


def assert_sane(samples: Samples) -> None:
    for (name, _), v in samples.items():
        if name.startswith("llamacloud_chat_"):
            assert math.isfinite(v) and v >= 0, (name, v)


def run_through(api: HostileApi, procs: Processes, mode: str) -> None:
    port = free_port()
    proc = procs.collector(
        "collector",
        "run",
        "--base-url",
        api.url,
        "--listen",
        f"127.0.0.1:{port}",
        *ARGS,
        env={"LLAMA_CLOUD_API_KEY": "hostile-key"},
    )
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200, WAIT, "first sync")
    result, (name, labels) = MODES[mode]

    def add_runs() -> None:
        good = [s for s in api.world.sessions.values() if s.session_id != HOSTILE_ID and s.pending is None]
        for session in good[:3]:
            api.world.add_run(session)
        if mode in HOSTILE_IS_GOOD:
            api.world.add_run(api.world.sessions[HOSTILE_ID])
        api.mode = mode

    api.prepare(mode)  # slow for some faults (a 1 GiB gzip bomb): the baseline is read after it, not before
    before = wait_until(lambda: scrape(port), WAIT, "the baseline")
    api.call(add_runs)  # the last change to the world: the truth below is final
    start = polls(before)

    def into_the_fault() -> Samples | None:
        seen = scrape(port)
        if polls(seen) < start + 2:
            return None
        assert_sane(seen)
        assert (value(seen, "llamacloud_collector_polls_total", result=result) or 0) > (
            value(before, "llamacloud_collector_polls_total", result=result) or 0
        ), f"no {result} cycle"
        assert (value(seen, name, **labels) or 0) > (value(before, name, **labels) or 0), (name, labels)
        codes = {dict(k)["code"] for k in family(seen, R)}
        assert codes <= {"error"} | {str(c) for c in range(100, 600)}, codes
        if mode not in LISTING_FAILS:
            assert_samples_match(seen, *truth(api, mode))  # good sessions counted exactly, the fault or not
        return seen

    seen = wait_until(into_the_fault, WAIT, "two cycles into the fault, its mark, and exact counts")
    assert proc.poll() is None, "the collector died"
    api.call(setattr, api, "mode", None)
    current = polls(seen)

    def recovered() -> Samples | None:
        after = scrape(port)
        if polls(after) < current + 2:
            return None
        assert_samples_match(after, *truth(api, mode))
        return after

    after = wait_until(recovered, WAIT, "two cycles after the fault, and exact counts")
    assert_sane(after)
    if mode == "bad_numbers":  # refused once per run, not once per fetch
        for field in ("duration_ms", "total_input_tokens", "total_output_tokens", "turns"):
            assert value(after, "llamacloud_collector_invalid_values_total", field=field) == 1, field
    assert peak_rss_mb(proc.pid) < MAX_RSS_MB
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(WAIT) == 0
    procs.procs.pop("collector")
    log = procs.log("collector")
    assert "Traceback" not in log and "hostile-key" not in log


@pytest.mark.parametrize("mode", list(MODES))
def test_hostile_upstream(api, procs, mode):
    run_through(api, procs, mode)
