"""One huge history, against the collector as a real process fed by the simulator (issue 27, item 5).

A session of a million minimal events is the most an API can send per byte under the default caps. It is
parsed and counted in a thread, off the event loop, and counted exactly once: /healthz and /metrics are
answered throughout, and the peak RSS (VmHWM, read from /proc) stays under 256 MiB (the chart allows 384 Mi). A longer
history fails on its own (``--max-events-per-session``), like an over-size body, while the others count.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from collector.settings import Settings
from tests.helpers import family, parse
from tests.stack import Processes, free_port, wait_until

pytestmark = pytest.mark.tier("process")

MAX_RSS_MB = 256
WAIT = 300.0
"""A generous bound on any wait for a condition (nothing here asserts how long a thing took)."""
PROBE_TIMEOUT = 10.0
"""A probe not answered within this long counts as missed: the issue asks 2 s, and a loaded 2-core machine gets
five times that (``bench/huge_history.py`` measures the real figure; the tests print their slowest probe). On
the loop, the parse stalled probes far longer: 4 of 7 timed out."""
MAX_EVENTS = Settings().max_events_per_session


class Probes(threading.Thread):
    """``/healthz`` every 0.2 s from another thread, each with its own connection, until stopped. A probe not
    answered in time, or answered with anything but 200, is missed (and its status kept)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop = url, threading.Event()
        self.answered: list[float] = []
        self.missed = 0
        self.statuses: list[int] = []

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                status = httpx.get(self.url + "/healthz", timeout=PROBE_TIMEOUT).status_code
            except httpx.HTTPError:
                self.missed += 1
            else:
                if status == 200:
                    self.answered.append(time.monotonic() - started)
                else:
                    self.missed += 1
                    self.statuses.append(status)
            self.stop.wait(0.2)

    def check(self) -> None:
        """Every probe answered 200 in time (and there were some); prints the slowest."""
        slowest = max(self.answered, default=None)
        assert self.missed == 0 and self.answered, (self.missed, self.statuses, slowest)
        print(f"\n/healthz: {len(self.answered)} probes answered, the slowest in {slowest:.2f} s")


class Collector:
    def __init__(self, procs: Processes) -> None:
        sim_port, port = free_port(), free_port()
        self.procs, self.sim, self.url = procs, f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{port}"
        procs.collector(
            "sim", "simulate", "--port", str(sim_port), "--sessions", "5", "--rate", "0", env={"LLAMA_CLOUD_API_KEY": "k"}
        )
        wait_until(lambda: httpx.get(self.sim + "/_sim/stats").status_code == 200, 30, "simulator")
        self.proc = procs.collector(
            "collector",
            "run",
            "--base-url",
            self.sim,
            "--interval",
            "5",
            "--listen",
            f"127.0.0.1:{port}",
            "--log-format",
            "json",
            env={"LLAMA_CLOUD_API_KEY": "k"},
        )
        wait_until(lambda: httpx.get(self.url + "/readyz").status_code == 200, 60, "first sync")

    def runs(self) -> float:
        samples = parse(httpx.get(self.url + "/metrics", timeout=30).text)
        return sum(family(samples, "llamacloud_chat_runs_total").values())

    def settled_runs(self) -> float:
        """The runs counted once two more cycles have ended over the frozen world (``--rate 0``, no touch since):
        a run counted twice by a later cycle would show here."""

        def cycles() -> float:
            samples = parse(httpx.get(self.url + "/metrics", timeout=30).text)
            return sum(family(samples, "llamacloud_collector_polls_total").values())

        start = cycles()
        wait_until(lambda: cycles() >= start + 2, WAIT, "two more cycles")
        return self.runs()

    def invalid_retrieves(self) -> float:
        samples = parse(httpx.get(self.url + "/metrics", timeout=30).text)
        return family(samples, "llamacloud_collector_invalid_payloads_total").get(frozenset({("operation", "retrieve")}), 0.0)

    def truth(self) -> int:
        """Every run the simulator made, the minimal histories' included."""
        totals = httpx.get(self.sim + "/_sim/totals", timeout=30).json()
        return totals["runs"] + totals["bare_runs"]

    def touch_the_others(self) -> None:
        """A run in each of the 5 ordinary sessions (the oldest five)."""
        assert httpx.get(self.sim + "/_sim/touch", params={"first": 5}, timeout=30).json()["changed"] == 5

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))


def test_a_million_minimal_stops_are_counted_once_off_the_loop_within_the_memory_limit(procs):
    collector = Collector(procs)
    before = collector.runs()
    probes = Probes(collector.url)
    probes.start()
    try:
        made = httpx.get(collector.sim + "/_sim/bare", params={"kind": "stop", "count": MAX_EVENTS}, timeout=WAIT).json()
        assert made["events"] == MAX_EVENTS
        wait_until(lambda: collector.runs() >= before + MAX_EVENTS, WAIT, "the huge history counted")
        collector.touch_the_others()
        wait_until(lambda: collector.runs() >= collector.truth(), WAIT, "the others counted")
    finally:
        probes.stop.set()
        probes.join()
    assert collector.settled_runs() == collector.truth(), "counted exactly once"
    probes.check()
    peak = collector.peak_rss_mb()
    assert peak < MAX_RSS_MB, peak
    assert "Traceback" not in collector.procs.log("collector")


def test_a_history_past_the_event_limit_fails_on_its_own_and_the_others_count(procs):
    collector = Collector(procs)
    probes = Probes(collector.url)
    probes.start()
    try:
        for kind, count in (("stop", 1_970_000), ("text_delta", 1_430_000)):
            refused = collector.invalid_retrieves()
            httpx.get(collector.sim + "/_sim/bare", params={"kind": kind, "count": count}, timeout=WAIT)
            wait_until(lambda r=refused: collector.invalid_retrieves() > r, WAIT, f"{kind} history refused")
            print(kind, "refused", collector.runs(), collector.truth())
        collector.touch_the_others()
        truth = collector.truth() - httpx.get(collector.sim + "/_sim/totals", timeout=30).json()["bare_runs"]
        wait_until(lambda: collector.runs() >= truth, WAIT, f"the others counted ({truth})")
    finally:
        probes.stop.set()
        probes.join()
    assert collector.settled_runs() == truth, "nothing of the refused histories counted"
    probes.check()
    peak = collector.peak_rss_mb()
    assert peak < MAX_RSS_MB, peak
    log = collector.procs.log("collector")
    assert "max-events-per-session" in log and "Traceback" not in log


def test_a_state_file_of_a_million_retired_sessions_loads_while_probes_pass_and_counts_stay_exact(procs, tmp_path):
    """Issue 27, item 7: the retired rows stay on disk (none is materialised at load), and liveness counts from
    the end of the load, not from the start: with ``--interval 10``, /healthz never says 503."""
    import sqlite3

    from collector.state import SessionState
    from collector.stored import encode_session

    state = tmp_path / "state.db"
    sim_port, port = free_port(), free_port()
    sim, url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{port}"
    procs.collector(
        "sim", "simulate", "--port", str(sim_port), "--sessions", "5", "--rate", "0", env={"LLAMA_CLOUD_API_KEY": "k"}
    )
    wait_until(lambda: httpx.get(sim + "/_sim/stats").status_code == 200, 30, "simulator")
    args = ("run", "--base-url", sim, "--interval", "10", "--listen", f"127.0.0.1:{port}", "--state-path", str(state))
    procs.collector("collector", *args, env={"LLAMA_CLOUD_API_KEY": "k"})
    wait_until(lambda: httpx.get(url + "/readyz").status_code == 200, 60, "first sync")
    procs.stop("collector")
    with sqlite3.connect(state) as db:  # a million sessions that once were, as the collector writes them
        db.executemany(
            "INSERT INTO retired (session_id, state) VALUES (?, ?)",
            ((f"gone-{i:07d}", encode_session(SessionState(f"gone-{i:07d}", "2026-01-01T00:00:00Z"))) for i in range(1_000_000)),
        )
    collector = procs.collector("collector", *args, env={"LLAMA_CLOUD_API_KEY": "k"})
    wait_until(lambda: httpx.get(url + "/healthz").status_code, 60, "listening (the load starts after)")
    probes = Probes(url)
    probes.start()
    try:
        wait_until(lambda: httpx.get(url + "/readyz").status_code == 200, WAIT, "the state loaded")
        assert httpx.get(sim + "/_sim/touch", params={"first": 5}).json()["changed"] == 5
        truth = httpx.get(sim + "/_sim/totals").json()["runs"]

        def counted() -> bool:
            samples = parse(httpx.get(url + "/metrics", timeout=30).text)
            return sum(family(samples, "llamacloud_chat_runs_total").values()) == truth

        wait_until(counted, WAIT, "the new runs counted, none twice")
    finally:
        probes.stop.set()
        probes.join()
    probes.check()
    with open(f"/proc/{collector.pid}/status") as status:
        peak = next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
    assert peak < MAX_RSS_MB, peak
    assert "Traceback" not in procs.log("collector")
