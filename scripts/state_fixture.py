"""Write the state-file fixture of a release: its state file, the upstream it was written from, and its exposition.

Run it with the release's own code first on the path, from a checkout of that release:

    git worktree add /tmp/rel <commit>
    cd /tmp/rel && python /path/to/scripts/state_fixture.py /path/to/tests/fixtures/state/<version>

It uses only what every release has: the ``simulate`` and ``run`` commands, ``/_sim/touch``, the chat API and
``/metrics``. It writes ``state.db`` (the release's file, after a clean stop), ``upstream.json`` (every
session's full history as the API served it) and ``metrics.txt`` (what the release exposed at the end).
See docs/testing.md, "State files across releases".
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

KEY = "fixture-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    out = Path(sys.argv[1]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp())
    env = {**os.environ, "LLAMA_CLOUD_API_KEY": KEY, "PYTHONPATH": os.getcwd()}
    sim_port, col_port = free_port(), free_port()
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "collector",
            "simulate",
            "--port",
            str(sim_port),
            "--sessions",
            "12",
            "--runs",
            "3",
            "--seed",
            "5",
            "--rate",
            "0",
        ],
        env=env,
    )
    base = f"http://127.0.0.1:{sim_port}"
    try:
        wait(lambda: httpx.get(base + "/_sim/stats").status_code == 200, 30, "simulator")
        col = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "collector",
                "run",
                "--base-url",
                base,
                "--listen",
                f"127.0.0.1:{col_port}",
                "--interval",
                "1",
                "--state-path",
                str(work / "state.db"),
                "--log-format",
                "json",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        metrics = f"http://127.0.0.1:{col_port}/metrics"
        wait(lambda: httpx.get(f"http://127.0.0.1:{col_port}/readyz").status_code == 200, 30, "first sync")
        for fail in ("1", "0"):
            httpx.get(base + "/_sim/touch", params={"fraction": "0.25", "fail": fail})
            time.sleep(2.5)
        stats = httpx.get(base + "/_sim/stats").json()
        wait(
            lambda: f'llamacloud_chat_runs_total{{outcome="error"}} {float(stats["errors"])}' in httpx.get(metrics).text,
            30,
            "every run counted",
        )
        (out / "metrics.txt").write_text(httpx.get(metrics).text)
        col.send_signal(signal.SIGTERM)
        col.wait(30)
        headers = {"Authorization": f"Bearer {KEY}"}
        listing, token = [], None
        while True:
            page = httpx.get(
                base + "/api/v1/chat", params={"page_size": 100, **({"page_token": token} if token else {})}, headers=headers
            ).json()
            listing += page["items"]
            token = page.get("next_page_token")
            if not token:
                break
        upstream = [httpx.get(f"{base}/api/v1/chat/{item['session_id']}", headers=headers).json() for item in listing]
        (out / "upstream.json").write_text(json.dumps(upstream, indent=1) + "\n")
        shutil.copy(work / "state.db", out / "state.db")
    finally:
        sim.terminate()
        sim.wait()


if __name__ == "__main__":
    main()
