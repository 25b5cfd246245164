"""Proxies come from the environment (HTTP_PROXY, HTTPS_PROXY, NO_PROXY), as the SDK's own client does."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading

import pytest

from tests.stack import free_port

pytestmark = pytest.mark.tier("process")

LISTING = json.dumps(
    {"items": [{"session_id": "via-proxy", "last_updated_at": "2026-01-01T00:00:00+00:00"}], "next_page_token": None}
).encode()


def start_proxy() -> tuple[int, list[bytes]]:
    """A forward proxy stand-in: records each request line and answers every request with a listing."""
    lines: list[bytes] = []
    ready = threading.Event()
    box: list[int] = []

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines.append(head.split(b"\r\n", 1)[0])
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(LISTING)).encode()
                    + b"\r\n\r\n"
                    + LISTING
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def run():
        loop = asyncio.new_event_loop()
        server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
        box.append(server.sockets[0].getsockname()[1])
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    assert ready.wait(60), "the proxy stand-in did not start"  # a bound on a condition, generous under load
    return box[0], lines


def check(base_url: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "collector", "check", "--base-url", base_url],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "LLAMA_CLOUD_API_KEY": "k", **env},
    )


def test_requests_go_through_the_proxy_the_environment_names():
    port, lines = start_proxy()
    result = check("http://api.example.invalid", {"HTTP_PROXY": f"http://127.0.0.1:{port}"})
    assert result.returncode == 0, result.stderr
    assert "via-proxy" in result.stdout
    assert lines and lines[0].startswith(b"GET http://api.example.invalid/api/v1/chat?page_size=100")


def test_no_proxy_hosts_are_reached_directly():
    port, lines = start_proxy()
    dead = free_port()  # nothing listens here: going through it would fail
    result = check(f"http://127.0.0.1:{port}", {"HTTP_PROXY": f"http://127.0.0.1:{dead}", "NO_PROXY": "127.0.0.1"})
    assert result.returncode == 0, result.stderr
    assert lines and lines[0].startswith(b"GET /api/v1/chat?")  # origin form: no proxy in between


def test_no_proxy_cidr_entries_are_honoured():
    port, lines = start_proxy()
    dead = free_port()
    result = check(
        f"http://127.0.0.1:{port}", {"HTTP_PROXY": f"http://127.0.0.1:{dead}", "NO_PROXY": "localhost,10.0.0.0/8,127.0.0.0/8"}
    )
    assert result.returncode == 0, result.stderr
    assert lines and lines[0].startswith(b"GET /api/v1/chat?")  # reached directly, not through the proxy
