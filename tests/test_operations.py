"""Operating it: operator mistakes, signals, kill -9, the key canary."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import httpx
import pytest

from tests.helpers import assert_samples_match, parse, remote_truth
from tests.stack import free_port, wait_until

pytestmark = pytest.mark.tier("process")

CANARY = "llx-CANARY-7d1f0e9a8b2c4d6e"
WAIT = 120.0
"""A generous bound on any wait for a condition: nothing here asserts how long a thing took, except the exit
after SIGTERM (``EXIT_BOUND``)."""
EXIT_BOUND = 25.0
"""SIGTERM to exit, on a loaded 2-core machine: inside Kubernetes' default grace period of 30 s, and far
from the 300 s the stuck retrieve would take (unloaded it exits within the 5 s given to a running cycle)."""


def collector(*args, env=None, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "collector", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "LLAMA_CLOUD_API_KEY": CANARY, **(env or {})},
    )


MISTAKES = [
    ("malformed YAML", "interval: [1, 2\n", [], {}, "is not valid YAML"),
    ("unknown key", "intervl: 5\n", [], {}, "unknown setting 'intervl'"),
    ("negative interval", None, ["--interval", "-1"], {}, "interval (--interval, COLLECTOR_INTERVAL)"),
    ("bad host:port", None, [], {"COLLECTOR_LISTEN": "localhost"}, "listen (--listen, COLLECTOR_LISTEN)"),
    ("shard >= total", None, ["--shard", "3", "--total-shards", "3"], {}, "shard (--shard, COLLECTOR_SHARD)"),
    ("invalid regex", "error_rules:\n  - {type: x, pattern: '[unclosed'}\n", [], {}, "error_rules.0.pattern"),
    (
        "unreadable key file",
        None,
        ["--api-key-file", "/nonexistent/key"],
        {"LLAMA_CLOUD_API_KEY": ""},
        "cannot read /nonexistent/key",
    ),
    ("missing key", None, [], {"LLAMA_CLOUD_API_KEY": ""}, "missing API key: set LLAMA_CLOUD_API_KEY"),
    ("state dir missing", None, ["--state-path", "/nonexistent/dir/state.db"], {}, "state_path"),
    ("bad web config", "", ["--web-config", "/nonexistent/web.yml"], {}, "web_config: cannot read"),
]


@pytest.mark.parametrize("name,config,args,env,fragment", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_operator_mistake_exits_2_with_one_line(tmp_path, name, config, args, env, fragment):
    if config:
        path = tmp_path / "config.yaml"
        path.write_text(config)
        args = ["--config", str(path), *args]
    listen = [] if "COLLECTOR_LISTEN" in env else ["--listen", f"127.0.0.1:{free_port()}"]
    result = collector("run", *listen, *args, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr and CANARY not in result.stderr + result.stdout


def start_sim(procs, sessions=20, rate=0.0):
    port = free_port()
    procs.collector(
        "simulator",
        "simulate",
        "--port",
        str(port),
        "--sessions",
        str(sessions),
        "--rate",
        str(rate),
        "--seed",
        "5",
        env={"LLAMA_CLOUD_API_KEY": CANARY},
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(url + "/_sim/stats").status_code == 200, 30, "simulator")
    return url


def start_collector(procs, sim, *args, name="collector"):
    port = free_port()
    proc = procs.collector(
        name,
        "--listen",
        f"127.0.0.1:{port}",
        "--interval",
        "1",
        *args,
        env={"LLAMA_CLOUD_BASE_URL": sim, "COLLECTOR_READ_TIMEOUT": "1", "LLAMA_CLOUD_API_KEY": CANARY},
    )
    url = f"http://127.0.0.1:{port}"

    def ready():
        assert proc.poll() is None, f"{name} exited: {procs.log(name)}"
        return httpx.get(url + "/readyz").status_code == 200

    wait_until(ready, WAIT, f"{name} ready")
    return url


def stats(sim):
    return httpx.get(sim + "/_sim/stats", timeout=WAIT).json()


def counted(sim: str, url: str) -> bool:
    """The collector's chat families equal the simulator's truth (a condition to wait on: no traffic)."""
    runs, events = remote_truth(sim)
    assert_samples_match(parse(httpx.get(url + "/metrics", timeout=WAIT).text), runs, events)
    return True


def test_sigterm_mid_cycle_exits_zero_promptly(procs):
    sim = start_sim(procs)
    start_collector(procs, sim)
    before = stats(sim)["calls"].get("retrieve", 0)
    httpx.get(sim + "/_sim/fault", params={"kind": "slow", "endpoint": "retrieve", "delay": 300, "times": 50})
    httpx.get(sim + "/_sim/touch", params={"fraction": 0.5})
    wait_until(lambda: stats(sim)["calls"].get("retrieve", 0) > before, WAIT, "a retrieve in flight")
    proc = procs.procs.pop("collector")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=EXIT_BOUND) == 0
    print(f"\nSIGTERM mid-cycle: exited in {time.monotonic() - started:.2f} s")
    log = procs.log("collector")
    assert "collector stopped" in log
    assert "Traceback" not in log and "CancelledError" not in log  # quietly, even with a stuck cycle


def test_kill_9_mid_cycle_loses_no_run(procs, tmp_path):
    sim = start_sim(procs)
    db = tmp_path / "state.db"
    url = start_collector(procs, sim, "--state-path", str(db))
    for _ in range(3):  # three changes, each counted (and saved) before the next
        httpx.get(sim + "/_sim/touch", params={"fraction": 0.3})
        wait_until(lambda: counted(sim, url), WAIT, "the change counted")
    before = stats(sim)["calls"].get("retrieve", 0)
    httpx.get(sim + "/_sim/fault", params={"kind": "slow", "endpoint": "retrieve", "delay": 0.8, "times": 4})
    httpx.get(sim + "/_sim/touch", params={"fraction": 0.5})
    wait_until(lambda: stats(sim)["calls"].get("retrieve", 0) > before, WAIT, "a retrieve in flight")
    killed = procs.procs.pop("collector")
    killed.kill()  # SIGKILL: no shutdown hook runs
    killed.wait()  # reaped: no zombie left to the GC (a ResourceWarning)
    httpx.get(sim + "/_sim/touch", params={"fraction": 0.2})  # the last change: no traffic after it
    url = start_collector(procs, sim, "--state-path", str(db), name="restarted")
    wait_until(lambda: counted(sim, url), WAIT, "totals to equal the truth after restart", interval=1.0)


def test_key_canary_never_leaks_across_a_fault_run(procs, tmp_path):
    sim = start_sim(procs, rate=5)
    db = tmp_path / "state.db"
    url = start_collector(procs, sim, "--log-level", "debug", "--state-path", str(db))
    faults = [
        ("status", {"status": 429, "retry_after": 1}),
        ("status", {"status": 500}),
        ("status", {"status": 503}),
        ("reset", {}),
        ("cut", {}),
        ("bad_json", {}),
        ("html", {}),
        ("content_type", {}),
        ("slow", {"delay": 2}),
        ("gone", {}),
        ("shrink", {}),
        ("unknown_event", {}),
    ]
    bodies = []
    for i, (kind, extra) in enumerate(faults, 1):
        for endpoint in ("list", "retrieve"):
            httpx.get(sim + "/_sim/fault", params={"kind": kind, "endpoint": endpoint, **extra})
        httpx.get(sim + "/_sim/touch", params={"fraction": 0.2})  # something to retrieve
        wait_until(
            lambda n=2 * i: sum(stats(sim)["faults_injected"].values()) >= n, WAIT, f"the {kind} faults met by the collector"
        )
        bodies += [httpx.get(url + path, timeout=WAIT).text for path in ("/metrics", "/", "/healthz", "/readyz")]
    injected = stats(sim)["faults_injected"]
    assert len(injected) == len({kind for kind, _ in faults}), injected
    procs.stop("collector")
    outputs = procs.log("collector") + "".join(bodies)
    files = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name.startswith("state"))
    assert CANARY not in outputs and CANARY.encode() not in files
    assert '"level": "warning"' in outputs or '"level": "error"' in outputs  # the faults were logged
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] > 0
