"""The installed command as a user runs it: demo, simulate, check, run, signals, promtool."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.tools import require

pytestmark = pytest.mark.tier("process")

CANARY = "llx-canary-5f1e2d3c4b5a69788796a5b4"
WAIT = 60.0
"""A generous bound on any wait for a condition, and on any one request: nothing here asserts how long a thing
took (a loaded 2-core machine starts a Python process in seconds)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = WAIT, status: int = 200, **kwargs) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=WAIT, **kwargs)
            if last.status_code == status:
                return last
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer {status} in {timeout}s (last: {last})")


def spawn(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "collector", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> tuple[int, str]:
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=WAIT)
    return proc.returncode, out


@pytest.fixture
def simulator():
    port = free_port()
    proc = spawn("simulate", "--port", str(port), "--sessions", "25", "--rate", "5", env={"LLAMA_CLOUD_API_KEY": CANARY})
    wait_for(f"http://127.0.0.1:{port}/_sim/stats")
    yield f"http://127.0.0.1:{port}"
    stop(proc)


DEMO_FAMILIES = (
    "runs_total",
    "run_errors_total",
    "run_duration_seconds_count",
    "run_tokens_count",
    "tokens_total",
    "run_turns_count",
    "run_tool_calls_count",
    "tool_calls_total",
    "skipped_index_queries_total",
    "events_total",
    "runs_in_progress",
    "session_info",
    "session_runs_total",
    "session_last_run_duration_seconds",
)


def without_data(text: str) -> list[str]:
    """The chat families of ``DEMO_FAMILIES`` with no series above zero in this exposition."""
    lines = text.splitlines()
    return [
        name
        for name in DEMO_FAMILIES
        if not any(float(line.rsplit(" ", 1)[1]) > 0 for line in lines if line.startswith("llamacloud_chat_" + name))
    ]


def test_demo_serves_every_chat_family_and_passes_promtool():
    port = free_port()
    proc = spawn("demo", "--listen", f"127.0.0.1:{port}", "--interval", "1", "--seed", "4")
    try:
        wait_for(f"http://127.0.0.1:{port}/readyz")
        deadline, text = time.monotonic() + WAIT, ""
        while time.monotonic() < deadline:  # live traffic keeps coming: until every family has data
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=WAIT).text
            if not without_data(text):
                break
            time.sleep(0.5)
    finally:
        code, out = stop(proc)
    assert code == 0, out
    assert not without_data(text), without_data(text)
    assert text.count("\nllamacloud_project_info{") == 2, "the demo's organization: two projects, both watched"
    result = subprocess.run([require("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


def test_check_lists_sessions_and_401_names_the_variable(simulator):
    env = {"LLAMA_CLOUD_BASE_URL": simulator, "LLAMA_CLOUD_API_KEY": CANARY}
    httpx.get(simulator + "/_sim/traffic", params={"pause": "1"}, timeout=WAIT).raise_for_status()  # traffic adds sessions
    sessions = httpx.get(simulator + "/_sim/stats", timeout=WAIT).json()["sessions"]  # frozen: what check must list
    assert sessions >= 25
    good = subprocess.run(
        [sys.executable, "-m", "collector", "check"], capture_output=True, text=True, env={**os.environ, **env}, timeout=60
    )
    assert good.returncode == 0 and f"{sessions} sessions would be watched" in good.stdout, good.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "collector", "check"],
        capture_output=True,
        text=True,
        env={**os.environ, **env, "LLAMA_CLOUD_API_KEY": "llx-wrong-key"},
        timeout=60,
    )
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and "401" in bad.stderr and "LLAMA_CLOUD_API_KEY" in bad.stderr
    assert "llx-wrong-key" not in bad.stderr and "Traceback" not in bad.stderr


def test_run_stops_cleanly_on_sigterm_and_never_prints_the_key(simulator):
    port = free_port()
    proc = spawn(
        "--listen",
        f"127.0.0.1:{port}",
        "--interval",
        "1",
        "--log-level",
        "debug",
        env={"LLAMA_CLOUD_BASE_URL": simulator, "LLAMA_CLOUD_API_KEY": CANARY},
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/readyz")
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=WAIT).text
        body += httpx.get(f"http://127.0.0.1:{port}/", timeout=WAIT).text
    finally:
        code, out = stop(proc)
    assert code == 0, out
    assert '"event": "poll cycle"' in out
    assert CANARY not in out and CANARY not in body


def test_sigint_also_exits_zero(simulator):
    port = free_port()
    proc = spawn("run", "--listen", f"127.0.0.1:{port}", env={"LLAMA_CLOUD_BASE_URL": simulator, "LLAMA_CLOUD_API_KEY": CANARY})
    wait_for(f"http://127.0.0.1:{port}/healthz")
    code, out = stop(proc, signal.SIGINT)
    assert code == 0, out


def test_port_in_use_exits_2_with_one_line(simulator):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "collector", "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "LLAMA_CLOUD_BASE_URL": simulator, "LLAMA_CLOUD_API_KEY": CANARY, "COLLECTOR_LOG_LEVEL": "error"},
        )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "listen" in result.stderr
