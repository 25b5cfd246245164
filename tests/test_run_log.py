"""Failed-run log lines: exactly one per failed run, across a restart with state; --log-runs all and none."""

from __future__ import annotations

import io
import json
import signal
import subprocess
from collections import Counter

import httpx
import pytest
import structlog

from collector import logs
from collector.derive import RunRecord
from collector.runlog import log_runs
from tests.helpers import remote_truth
from tests.stack import Processes, free_port, wait_until

pytestmark = pytest.mark.tier("unit")

SECRET = "llx-RUNLOG-canary-42"


def lines(procs: Processes, names: list[str]) -> list[dict]:
    out = []
    for name in names:
        for line in procs.log(name).splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
    return out


@pytest.mark.tier("process")
def test_exactly_one_line_per_failed_run_across_a_restart_with_state(tmp_path):
    procs = Processes(tmp_path)
    try:
        sim_port = free_port()
        sim = f"http://127.0.0.1:{sim_port}"
        procs.collector(
            "sim", "simulate", "--port", str(sim_port), "--sessions", "20", "--rate", "0", env={"LLAMA_CLOUD_API_KEY": SECRET}
        )
        wait_until(lambda: httpx.get(sim + "/_sim/stats").status_code == 200, 30, "simulator")
        db = tmp_path / "state.db"

        def start(name: str) -> tuple[subprocess.Popen, int]:
            port = free_port()
            proc = procs.collector(
                name,
                "run",
                "--base-url",
                sim,
                "--listen",
                f"127.0.0.1:{port}",
                "--interval",
                "1",
                "--state-path",
                str(db),
                "--log-format",
                "json",
                env={"LLAMA_CLOUD_API_KEY": SECRET},
            )
            wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200, 30, name)
            return proc, port

        def counted(port: int) -> float:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            return float(
                next(
                    line.split()[-1]
                    for line in text.splitlines()
                    if line.startswith('llamacloud_chat_runs_total{outcome="error",')
                )
            )

        first, port = start("first")
        history = len(remote_truth(sim)[0])  # runs before the first sync: counted, not logged
        httpx.get(sim + "/_sim/touch", params={"fraction": 0.5, "fail": 1})
        total_errors = sum(r.failed for r in remote_truth(sim)[0])
        wait_until(lambda: counted(port) == total_errors, 30, "the failed runs counted")
        first.send_signal(signal.SIGTERM)
        assert first.wait(15) == 0
        procs.procs.pop("first")
        _second, port = start("second")
        httpx.get(sim + "/_sim/touch", params={"fraction": 0.3, "fail": 1})
        truth = remote_truth(sim)[0]
        wait_until(lambda: counted(port) == sum(r.failed for r in truth), 30, "the new failed runs counted")
        wait_until(
            lambda: (
                sum(1 for e in lines(procs, ["first", "second"]) if e["event"] == "chat run failed")
                >= sum(r.failed for r in truth[history:])
            ),
            10,
            "their log lines",
        )
        failed_lines = [e for e in lines(procs, ["first", "second"]) if e["event"] == "chat run failed"]
        want = Counter(r.session_id for r in truth[history:] if r.failed)
        assert Counter(e["session_id"] for e in failed_lines) == want  # one line per run, none twice
        errors = Counter((r.session_id, r.error_type) for r in truth[history:] if r.failed)
        assert Counter((e["session_id"], e["error_type"]) for e in failed_lines) == errors
        sample = failed_lines[0]
        assert sample["level"] == "warning" and sample["error"] and len(sample["error"]) <= 500
        assert {"duration_seconds", "input_tokens", "output_tokens"} <= set(sample)
        assert not any(e["event"] == "chat run finished" for e in lines(procs, ["first", "second"]))
        assert SECRET not in procs.log("first") + procs.log("second")
    finally:
        procs.stop_all()


def run(failed: bool, error: str | None = None) -> RunRecord:
    return RunRecord(failed, "internal" if failed else None, 1.5, 10, 20, 2, (), (), (), error)


def test_modes_error_text_limit_and_redaction():
    stream = io.StringIO()
    logs.configure("info", "json", ["llx-topsecret"], stream=stream)
    log = structlog.get_logger("collector.runs")
    long_error = "boom with llx-topsecret " + "x" * 1000
    counted = [("s1", run(True, long_error[:500])), ("s2", run(False))]
    assert log_runs(log, "failed", counted) == 1
    assert log_runs(log, "all", counted) == 2
    assert log_runs(log, "none", counted) == 0
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["event"] for e in entries] == ["chat run failed", "chat run failed", "chat run finished"]
    assert "llx-topsecret" not in stream.getvalue() and entries[0]["error"].startswith("boom with [REDACTED]")
    assert entries[0]["duration_seconds"] == 1.5 and entries[0]["session_id"] == "s1"


def test_the_error_text_a_run_carries_is_cut_to_500_characters():
    from collector.derive import ErrorClassifier, derive
    from collector.llamacloud.models import parse_session

    body = {
        "session_id": "s",
        "last_updated_at": "2026-01-01T00:00:00",
        "events": [
            {"type": "user_input", "content": "q"},
            {"type": "stop", "is_error": True, "error": "e" * 2000},
            {"type": "user_input", "content": "q"},
            {"type": "stop", "is_error": False, "error": None},
        ],
    }
    failed, ok = derive(parse_session(json.dumps(body).encode()).events, 0, 0, ErrorClassifier()).runs
    assert failed.error == "e" * 500 and ok.error is None


def test_failed_run_lines_are_capped_per_cycle_with_one_line_for_the_rest():
    import io
    import json

    import structlog

    from collector import logs
    from collector.derive import RunRecord
    from collector.runlog import log_runs

    stream = io.StringIO()
    logs.configure("info", "json", stream=stream)
    runs = [("s", RunRecord(True, "internal", 1.0, 1, 1, 1, (), (), error="boom"))] * 1000
    assert log_runs(structlog.get_logger("collector.runs"), "failed", runs, limit=300) == 300
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 301 and lines[-1]["event"] == "more runs not logged this cycle" and lines[-1]["count"] == 700
    structlog.get_logger("x").warning("huge", session_id="x" * 5_000_000)
    huge = json.loads(stream.getvalue().splitlines()[-1])
    assert len(huge["session_id"]) < 300 and "(5000000 characters)" in huge["session_id"]
    structlog.reset_defaults()
