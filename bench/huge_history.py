"""One huge history against the real CLI (issue 27, item 5): how long it takes to count, how long /healthz
waits meanwhile, and the collector's peak RSS.

    python bench/huge_history.py [--events 1000000] [--kind stop|text_delta] [--interval 5]

Starts the simulator (5 ordinary sessions) and ``collector run`` as processes, adds one session of ``--events``
minimal events (``/_sim/bare``, compact JSON: the most events per byte), probes ``/healthz`` every 0.1 s from
another thread until it is counted (or refused), and prints JSON figures.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait(check, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("timed out")


def runs(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=60).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("llamacloud_chat_runs_total{"))


def refused(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=60).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('llamacloud_collector_invalid_payloads_total{operation="retrieve"}')
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--kind", default="stop")
    parser.add_argument("--interval", default="5")
    args = parser.parse_args()
    sim_port, port = free_port(), free_port()
    sim, url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{port}"
    env = {**os.environ, "LLAMA_CLOUD_API_KEY": "k"}
    logs = tempfile.mkdtemp(prefix="huge-history-")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "collector", "simulate", "--port", str(sim_port), "--sessions", "5", "--rate", "0"],
            env=env,
            stdout=open(f"{logs}/sim.log", "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
    ]
    try:
        wait(lambda: httpx.get(sim + "/_sim/stats").status_code == 200, 30)
        collector = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "collector",
                "run",
                "--base-url",
                sim,
                "--interval",
                args.interval,
                "--listen",
                f"127.0.0.1:{port}",
                "--log-format",
                "json",
            ],
            env=env,
            stdout=open(f"{logs}/collector.log", "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        procs.append(collector)
        wait(lambda: httpx.get(url + "/readyz").status_code == 200, 60)
        before, refused_before = runs(url), refused(url)
        latencies: list[float] = []
        missed = [0]
        stop = threading.Event()

        def probe() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    httpx.get(url + "/healthz", timeout=10).raise_for_status()
                    latencies.append(time.monotonic() - started)
                except httpx.HTTPError:
                    missed[0] += 1
                stop.wait(0.1)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        made = httpx.get(sim + "/_sim/bare", params={"kind": args.kind, "count": args.events}, timeout=300).json()
        started = time.monotonic()
        counts = args.kind == "stop" and args.events <= 1_000_000
        wait((lambda: runs(url) >= before + args.events) if counts else (lambda: refused(url) > refused_before), 600)
        took = time.monotonic() - started
        stop.set()
        prober.join()
        with open(f"/proc/{collector.pid}/status") as status:
            peak = next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
        latencies.sort()
        print(
            json.dumps(
                {
                    "events": args.events,
                    "kind": args.kind,
                    "body_bytes": made["bytes"],
                    "outcome": "counted" if counts else "refused",
                    "seconds_to_count_or_refuse": round(took, 1),
                    "runs_counted": runs(url) - before,
                    "healthz_probes": len(latencies),
                    "healthz_missed": missed[0],
                    "healthz_p50_ms": round(1000 * latencies[len(latencies) // 2], 1) if latencies else None,
                    "healthz_max_ms": round(1000 * latencies[-1], 1) if latencies else None,
                    "peak_rss_mib": round(peak, 1),
                    "logs": logs,
                },
                indent=1,
            )
        )
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(15)


if __name__ == "__main__":
    main()
