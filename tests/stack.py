"""Real processes for end-to-end tests: simulator, collector, Prometheus, Alertmanager, a webhook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from tests.tools import require


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, KeyError, ValueError, AssertionError) as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


class Processes:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        with open(self.folder / f"{name}.log", "w") as log:  # the process writes to its own copy of the file
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.procs[name] = proc
        return proc

    def collector(self, name: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        return self.start(name, [sys.executable, "-m", "collector", *args], env)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


class Webhook:
    """Collects what Alertmanager posts."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alert_names(self) -> set[str]:
        return {a["labels"]["alertname"] for message in self.received for a in message["alerts"]}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_alertmanager(procs: Processes, webhook_port: int) -> int:
    port = free_port()
    config = procs.folder / "alertmanager.yml"
    config.write_text(
        "route:\n  receiver: hook\n  group_by: [alertname]\n  group_wait: 1s\n  group_interval: 1s\n"
        "  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n"
        f"      - url: http://127.0.0.1:{webhook_port}/\n"
    )
    procs.start(
        "alertmanager",
        [
            require("prometheus-alertmanager"),
            f"--config.file={config}",
            f"--storage.path={procs.folder / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
    )
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/-/ready").status_code == 200, 30, "alertmanager")
    return port


OPERATOR_LABELS = {
    "namespace": "monitoring",
    "service": "llamacloud-collector",
    "pod": "llamacloud-collector-0",
    "container": "collector",
    "endpoint": "http-metrics",
}
"""The target labels the Prometheus Operator attaches to a ServiceMonitor's targets."""


def start_prometheus(
    procs: Processes, targets: list[int], rule_files: list[Path], am_port: int | None, plain_job: str | None = None
) -> str:
    """Prometheus scraping ``targets`` the way the Prometheus Operator does (job ``llamacloud-collector``,
    its target labels, ``honor_labels: false``); with ``plain_job``, also a plain scrape of the same targets."""
    port = free_port()
    config = procs.folder / "prometheus.yml"
    alerting = (
        f"alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\n" if am_port else ""
    )
    addresses = json.dumps([f"127.0.0.1:{t}" for t in targets])
    jobs = (
        "  - job_name: llamacloud-collector\n    honor_labels: false\n    static_configs:\n"
        f"      - targets: {addresses}\n        labels: {json.dumps(OPERATOR_LABELS)}\n"
    )
    if plain_job:
        jobs += f"  - job_name: {plain_job}\n    static_configs:\n      - targets: {addresses}\n"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: {json.dumps([str(p) for p in rule_files])}\n{alerting}scrape_configs:\n{jobs}"
    )
    procs.start(
        "prometheus",
        [
            require("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={procs.folder / 'tsdb'}",
            "--enable-feature=exemplar-storage",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(url + "/-/ready").status_code == 200, 30, "prometheus")
    return url


def query(prometheus: str, expr: str, at: float | None = None) -> list[dict]:
    """An instant query, evaluated now or at the Unix time ``at``."""
    params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
    body = httpx.get(prometheus + "/api/v1/query", params=params, timeout=30).json()
    if body["status"] != "success":
        raise AssertionError(f"query failed: {expr}: {body.get('error')}")
    return body["data"]["result"]


def firing(prometheus: str) -> dict[str, set[str]]:
    alerts = httpx.get(prometheus + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    states: dict[str, set[str]] = {}
    for alert in alerts:
        states.setdefault(alert["state"], set()).add(alert["labels"]["alertname"])
    return states
