"""A small asyncio HTTP/1.1 server: keep-alive, GET and HEAD only, bounded and timed.

Shared by the collector's endpoints and the simulator. A request head larger
than ``max_head`` bytes, or one that does not arrive within ``read_timeout``,
closes the connection: a slow or greedy client cannot hold the server.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    truncate_at: int | None = None
    """Send the full Content-Length but only this many body bytes, then drop the connection."""
    reset: bool = False
    """Close the connection before answering."""


Handler = Callable[[Request], Awaitable[Response]]


def text(status: int, message: str) -> Response:
    return Response(status, (message + "\n").encode())


def _head(response: Response, keep_alive: bool) -> bytes:
    reason = HTTPStatus(response.status).phrase if response.status in HTTPStatus._value2member_map_ else ""
    lines = [f"HTTP/1.1 {response.status} {reason}", f"Content-Type: {response.content_type}",
             f"Content-Length: {len(response.body)}", f"Connection: {'keep-alive' if keep_alive else 'close'}"]
    lines += [f"{k}: {v}" for k, v in response.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_request(reader: asyncio.StreamReader, timeout: float) -> tuple[Request, bool] | None:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise ValueError("bad request line")
    method, target, version = parts
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    url = urlsplit(target)
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    return Request(method.upper(), unquote(url.path), query, headers), keep_alive


async def _connection(handler: Handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      read_timeout: float) -> None:
    try:
        while True:
            try:
                parsed = await _read_request(reader, read_timeout)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return
            except (asyncio.LimitOverrunError, ValueError):
                refusal = text(431, "request too large or malformed")
                writer.write(_head(refusal, False) + refusal.body)
                await writer.drain()
                return
            request, keep_alive = parsed
            if request.method not in ("GET", "HEAD") or int(request.headers.get("content-length") or 0):
                response = text(405, "only GET and HEAD")
                response.headers["Allow"] = "GET, HEAD"
                keep_alive = False
            else:
                response = await handler(request)
            if response.reset:
                writer.transport.abort()
                return
            writer.write(_head(response, keep_alive))
            if request.method != "HEAD":
                body = response.body if response.truncate_at is None else response.body[: response.truncate_at]
                writer.write(body)
            await writer.drain()
            if response.truncate_at is not None:
                writer.transport.abort()
                return
            if not keep_alive:
                return
    except (ConnectionError, asyncio.CancelledError):
        return
    finally:
        if not writer.is_closing():
            writer.close()


class HttpServer:
    """A listening server that, when closed, also drops its open keep-alive connections."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self.connections):
            writer.transport.abort()
        self.connections.clear()


async def serve(handler: Handler, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                max_head: int = 16384, read_timeout: float = 10.0) -> HttpServer:
    """Start serving; the caller closes the returned server."""
    http = HttpServer()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        http.connections.add(writer)
        try:
            await _connection(handler, reader, writer, read_timeout)
        finally:
            http.connections.discard(writer)

    http.server = await asyncio.start_server(on_client, host, port, limit=max_head, ssl=ssl_context,
                                             ssl_handshake_timeout=read_timeout if ssl_context else None)
    return http
