"""Soak: about 2 minutes, 1 s polls, live traffic and random faults; then exact totals, bounded memory."""

import random
import time
from collections import Counter

import httpx
import pytest

from tests.helpers import assert_samples_match, family, parse, remote_truth, value
from tests.stack import Processes, free_port, wait_until

pytestmark = pytest.mark.tier("process", "soak")

KEY = "llx-soak"
DURATION = 110.0
MEMORY_GROWTH_BOUND = 40 * 1024 * 1024
FAULTS = [
    {"kind": "status", "status": 429, "retry_after": 1},
    {"kind": "status", "status": 503},
    {"kind": "status", "status": 502},
    {"kind": "status", "status": 500},
    {"kind": "reset"},
    {"kind": "cut"},
    {"kind": "bad_json"},
    {"kind": "html"},
    {"kind": "content_type"},
    {"kind": "slow", "delay": 1.5},
    {"kind": "unknown_event"},
]


def test_soak(tmp_path):
    rng = random.Random(2026)
    procs = Processes(tmp_path)
    sim_port, port = free_port(), free_port()
    sim, url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{port}"
    try:
        procs.collector(
            "simulator", "simulate", "--port", str(sim_port), "--sessions", "60", "--rate", "10", env={"LLAMA_CLOUD_API_KEY": KEY}
        )
        wait_until(lambda: httpx.get(sim + "/_sim/stats").status_code == 200, 30, "simulator")
        procs.collector(
            "collector",
            "--listen",
            f"127.0.0.1:{port}",
            "--interval",
            "1",
            env={"LLAMA_CLOUD_API_KEY": KEY, "LLAMA_CLOUD_BASE_URL": sim, "COLLECTOR_READ_TIMEOUT": "1"},
        )
        wait_until(lambda: httpx.get(url + "/readyz").status_code == 200, 60, "collector ready")
        start_rss = value(parse(httpx.get(url + "/metrics").text), "process_resident_memory_bytes")
        deadline = time.monotonic() + DURATION
        while time.monotonic() < deadline:
            if rng.random() < 0.5:
                fault = rng.choice(FAULTS)
                httpx.get(sim + "/_sim/fault", params={**fault, "endpoint": rng.choice(["list", "retrieve"])})
            assert httpx.get(url + "/metrics").status_code == 200
            time.sleep(1.0)
        httpx.get(sim + "/_sim/traffic", params={"pause": "1"})
        runs, events = remote_truth(sim)
        injected = httpx.get(sim + "/_sim/stats").json()["faults_injected"]

        def exact():
            assert_samples_match(parse(httpx.get(url + "/metrics").text), runs, events)
            return True

        try:
            wait_until(exact, 30, "totals to equal the truth", interval=1.0)
        except AssertionError:
            got = family(parse(httpx.get(url + "/metrics").text), "llamacloud_chat_session_runs_total")
            per_session = Counter()
            for labels, v in got.items():
                per_session[dict(labels)["session_id"]] += v
            truth = Counter(r.session_id for r in runs)
            print({sid: (n, per_session.get(sid)) for sid, n in truth.items() if per_session.get(sid) != n})
            print(procs.log("collector")[-3000:])
            exact()
        samples = parse(httpx.get(url + "/metrics").text)
        end_rss = value(samples, "process_resident_memory_bytes")
        cycles = {r: value(samples, "llamacloud_collector_polls_total", result=r) for r in ("success", "partial", "failure")}
        counted = sum(v for k, v in samples.items() if k[0] == "llamacloud_chat_runs_total")
        print(
            f"\nsoak: {DURATION:.0f} s, cycles {cycles}, faults injected {sum(injected.values())} {injected}, "
            f"runs counted {counted:.0f} = truth {len(runs)}, RSS start {start_rss / 2**20:.1f} MiB "
            f"end {end_rss / 2**20:.1f} MiB (bound: +{MEMORY_GROWTH_BOUND / 2**20:.0f} MiB)"
        )
        assert counted == len(runs)
        assert sum(injected.values()) >= 20
        assert cycles["partial"] + cycles["failure"] >= 5
        assert end_rss - start_rss <= MEMORY_GROWTH_BOUND
    finally:
        procs.stop_all()
