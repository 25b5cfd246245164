"""The two wires a request can take, held to the same answers: an injected httpx transport (the tests'
``MockTransport``), and aiohttp straight (``DirectAiohttp``, what httpx's own aiohttp transport is sent
through in production), here against a real aiohttp server on loopback. Each case is one upstream answer
and what the client makes of it; both wires must make the same."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from collector.app import build_client
from collector.errors import FetchError, PayloadError
from collector.llamacloud.bounds import BodyTooSlow, Claim, read_pieces
from collector.llamacloud.client import LlamaCloudClient
from collector.metrics import SelfMetrics
from collector.settings import Settings
from tests.helpers import run_async

pytestmark = pytest.mark.tier("unit")

SUMMARY = {"session_id": "s1", "last_updated_at": "2026-01-01T00:00:00+00:00", "shared_access": "query"}
JSON = {"Content-Type": "application/json"}
CAP = 64 * 1024

Answer = tuple[int, list[tuple[str, str]], bytes]
"""Status, headers (a name may repeat) and the body as sent on the wire."""


def body(payload: Any = SUMMARY) -> bytes:
    return json.dumps(payload).encode()


CASES: dict[str, list[Answer]] = {
    "plain": [(200, [*JSON.items()], body())],
    "gzip": [(200, [*JSON.items(), ("Content-Encoding", "gzip")], gzip.compress(body()))],
    "not_gzip": [(200, [*JSON.items(), ("Content-Encoding", "gzip")], b"not gzip at all")],
    "gzip_bomb": [(200, [*JSON.items(), ("Content-Encoding", "gzip")], gzip.compress(b" " * (CAP * 64)))],
    "over_cap": [(200, [*JSON.items()], body({**SUMMARY, "pad": "x" * CAP}))],
    "no_content_type": [(200, [], body())],
    "html": [(200, [("Content-Type", "text/html")], b"<html></html>")],
    "retry_after": [(503, [("Retry-After", "7")], b""), (200, [*JSON.items()], body())],
    "retry_after_ms": [(429, [("Retry-After-Ms", "1500")], b""), (200, [*JSON.items()], body())],
    "retry_after_twice": [(503, [("Retry-After", "7"), ("Retry-After", "9")], b""), (200, [*JSON.items()], body())],
    "deflate": [(200, [*JSON.items(), ("Content-Encoding", "deflate")], zlib.compress(body()))],
    "deflate_cut": [(200, [*JSON.items(), ("Content-Encoding", "deflate")], zlib.compress(body())[:-6])],
    "br": [(200, [*JSON.items(), ("Content-Encoding", "br")], b"xx")],
    "zstd": [(200, [*JSON.items(), ("Content-Encoding", "zstd")], b"xx")],
    "gzip_listed": [(200, [*JSON.items(), ("Content-Encoding", "gzip, identity")], gzip.compress(body()))],
    "gzip_twice": [(200, [*JSON.items(), ("Content-Encoding", "gzip"), ("Content-Encoding", "gzip")], gzip.compress(body()))],
    "identity": [(200, [*JSON.items(), ("Content-Encoding", "identity")], body())],
    "redirect": [(302, [("Location", "https://elsewhere.test/login")], b"")],
    "redirect_latin1": [(302, [("Location", "https://evil.test/\xff\xfe")], b"")],
    "redirect_utf8": [(302, [("Location", "https://b\u00fccher.test/")], b"")],
    "forbidden": [(403, [*JSON.items()], b'{"detail": "no"}')],
    "other_session": [(200, [*JSON.items()], body({**SUMMARY, "session_id": "s2"}))],
}


def wire_bytes(value: str) -> bytes:
    """A header value's bytes on the wire: Latin-1 where it has a character past U+00FF's range's start
    (``\xff``: bytes that are not UTF-8), UTF-8 otherwise."""
    return value.encode("latin-1") if "\xff" in value else value.encode()


def outcome(client: LlamaCloudClient, sleeps: list[float], registry: CollectorRegistry) -> Callable[[], Any]:
    async def summary() -> tuple[str, object, list[float], float | None]:
        try:
            got: object = (await client.summary("s1")).model_dump(mode="json")
        except (PayloadError, FetchError) as exc:
            message = str(exc).replace(client._base, "BASE")
            if "undecodable body" in message:  # then the library's own error, in its words: not compared
                message = message[: message.index("undecodable body") + len("undecodable body")]
            got = (type(exc).__name__, message)
        finally:
            await client.aclose()
        invalid = registry.get_sample_value("llamacloud_collector_invalid_payloads_total", {"operation": "summary"})
        return "answer", got, [round(s, 1) for s in sleeps], invalid  # a pause is waited out on the real clock

    return summary


def make(base_url: str, transport: httpx.AsyncBaseTransport | None) -> tuple[LlamaCloudClient, list[float], CollectorRegistry]:
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    registry = CollectorRegistry()
    client = build_client(
        Settings(base_url=base_url, project_id="p1", max_response_bytes=CAP),
        "llx-key",
        SelfMetrics(registry),
        transport,
        sleep=fake_sleep,
        rng=lambda: 1.0,
        wall_clock=lambda: 1_000_000.0,
    )
    return client, sleeps, registry


def through_httpx(answers: list[Answer]) -> Any:
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        status, headers, content = queue.pop(0)
        return httpx.Response(status, headers=[(n.encode(), wire_bytes(v)) for n, v in headers], content=content)

    client, sleeps, registry = make("https://api.test", httpx.MockTransport(handler))
    assert client._direct is None, "an injected transport is sent through as it is"
    return run_async(outcome(client, sleeps, registry)())


def through_aiohttp(answers: list[Answer]) -> Any:
    """Over loopback, from a server that sends each answer's bytes as they are (no header added but its
    length), on one kept-alive connection or more."""
    queue = list(answers)

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while queue:
                await reader.readuntil(b"\r\n\r\n")
                status, headers, content = queue.pop(0)
                lines = [f"HTTP/1.1 {status} X".encode(), *(n.encode() + b": " + wire_bytes(v) for n, v in headers)]
                lines.append(f"Content-Length: {len(content)}".encode())
                writer.write(b"\r\n".join([*lines, b"", b""]) + content)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def scenario() -> Any:
        server = await asyncio.start_server(connection, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            client, sleeps, registry = make(f"http://127.0.0.1:{port}", None)
            assert client._direct is not None, "httpx's own aiohttp transport is sent on aiohttp straight"
            return await outcome(client, sleeps, registry)()
        finally:
            server.close()

    return run_async(scenario())


@pytest.mark.parametrize("case", list(CASES))
def test_both_wires_make_the_same_of_an_answer(case):
    answers = CASES[case]
    want = through_httpx(answers)
    assert through_aiohttp(answers) == want


def test_the_cases_mean_what_they_say():
    """What the shared cases come to, so that a case both wires get wrong the same way is still caught."""
    for case in ("plain", "gzip", "no_content_type", "retry_after", "retry_after_ms", "retry_after_twice"):
        assert through_httpx(CASES[case])[1]["session_id"] == "s1", case
    assert through_httpx(CASES["not_gzip"])[1:] == (("PayloadError", "summary: undecodable body"), [], 1.0)
    for case in ("gzip_bomb", "over_cap"):
        kind, message = through_httpx(CASES[case])[1]
        assert (kind, message.startswith("summary: too large: BodyTooLarge")) == ("PayloadError", True), case
    assert through_httpx(CASES["retry_after"])[2] == [7.0]
    assert through_httpx(CASES["retry_after_ms"])[2] == [1.5], "a 429's pause, waited out in the budget"
    assert through_httpx(CASES["retry_after_twice"])[2] == [1.0], "two values are no number: its own backoff"
    assert "elsewhere.test" in through_httpx(CASES["redirect"])[1][1]
    assert through_httpx(CASES["html"])[1][0] == "PayloadError"
    assert through_httpx(CASES["other_session"])[1][0] == "PayloadError"
    for case in ("deflate", "deflate_cut", "br", "zstd", "gzip_listed", "gzip_twice"):  # only gzip is asked for
        assert through_httpx(CASES[case])[1:] == (("PayloadError", "summary: undecodable body"), [], 1.0), case
    assert through_httpx(CASES["identity"])[1]["session_id"] == "s1"
    assert "https://evil.test/\xff\xfe" in through_httpx(CASES["redirect_latin1"])[1][1], "Latin-1, as httpx reads it"
    assert "https://b\u00fccher.test/" in through_httpx(CASES["redirect_utf8"])[1][1]


async def timing_out(first: bytes = b"") -> AsyncIterator[bytes]:
    if first:
        yield first
    raise TimeoutError("the transport's own read timeout")  # aiohttp's SocketTimeoutError is a TimeoutError


def test_a_transports_timeout_is_a_timeout_not_a_slow_body():
    """aiohttp's read timeout is a ``TimeoutError``: it stays one (retried as ``timeout``) whether the body
    holds the gate or not; only the gate's own deadline makes ``BodyTooSlow``."""

    async def scenario() -> None:
        lock = asyncio.Lock()
        with pytest.raises(TimeoutError):
            await read_pieces(timing_out(), CAP, Claim(lock), lambda: 0)
        held = Claim(lock)
        await held.take()
        with pytest.raises(TimeoutError) as raised:
            await read_pieces(timing_out(), CAP, held, lambda: 0)
        assert not isinstance(raised.value, BodyTooSlow)
        held.release()

    run_async(scenario())


def test_direct_reads_what_httpx_aiohttp_keeps_on_its_transport():
    """``DirectAiohttp`` sends on the transport's own session, with its proxy: the attributes it reads of
    ``httpx_aiohttp.AiohttpTransport`` (not a documented API) are still there, and a proxy's credentials go
    in ``Proxy-Authorization`` to the proxy (as aiohttp 3.14 asks), not in the URL."""
    from httpx_aiohttp import AiohttpTransport

    from collector.llamacloud.client import DirectAiohttp

    headers = httpx.Headers({"Authorization": "Bearer k"})
    timeouts = {"connect": 1.0, "read": 2.0, "pool": 1.0}
    plain = AiohttpTransport()
    assert plain.client is None and callable(plain.get_client) and plain.proxy is None
    direct = DirectAiohttp(plain, headers, timeouts, secure=True)
    assert direct._proxy is None and direct._proxy_headers is None and "Proxy-Authorization" not in direct._headers
    assert direct._timeout.sock_read == 2.0 and direct._timeout.sock_connect == direct._timeout.connect == 1.0
    credentials = "Basic " + base64.b64encode(b"user:secret").decode()
    for secure in (True, False):
        proxy = httpx.Proxy("http://user:secret@proxy.test:3128")
        proxied = DirectAiohttp(AiohttpTransport(proxy=proxy), headers, timeouts, secure=secure)
        assert proxied._proxy == "http://proxy.test:3128"
        assert proxied._proxy_headers is not None
        on_connect, on_request = proxied._proxy_headers.get("Proxy-Authorization"), proxied._headers.get("Proxy-Authorization")
        assert (on_connect, on_request) == ((credentials, None) if secure else (None, credentials)), secure
