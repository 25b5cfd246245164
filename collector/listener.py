"""Serving an ``aiohttp.web`` application with bounds a hostile client cannot move.

aiohttp parses every request (malformed or ambiguous ones get 400 from its
parser). Around it: a cap on open connections (one more is closed at once),
an idle keep-alive timeout that also ends a request head that never
completes, no access log (a flood of requests is not a flood of lines), and
no traceback for anything a client can cause.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any

from aiohttp import web

from collector.errors import ConfigError
from collector.settings import split_listen

MAX_CONNECTIONS = 1024
KEEPALIVE_TIMEOUT = 15.0
SHUTDOWN_TIMEOUT = 2.0
HEAD_TIMEOUT = 5.0
"""A connection must bring a whole request head within this long of opening (after an answer, within the
keep-alive timeout); the application's first sight of a request disarms it (aiohttp parses; nothing here
reads the bytes)."""
SEND_BUFFER = 64 * 1024
"""The kernel's send buffer for one connection (Linux doubles it for bookkeeping). Left to autotuning it grows
to 4 MiB: 633 clients that never read held 1.5 GiB of socket memory (charged to the pod's cgroup) and the loop
spent its time copying answers into it. 64 KiB (128 KiB doubled) still moves about 100 MB/s at a 1 ms round
trip; across regions (60 ms) a scrape gets about 2 MB/s."""
PER_PEER_SHARE = 16
"""One peer address holds at most 1/16 of the connection cap (64 of 1,024): a slow-head attacker from one
host cannot lock out Prometheus and the kubelet, which connect from others."""


class Guard(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection: the per-peer share and the head deadline."""

    def __init__(self, inner: asyncio.Protocol, peers: dict[str, int], per_peer: int) -> None:
        self.inner, self.peers, self.per_peer = inner, peers, per_peer
        self.peer: str | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a stream server's transports (TCP or TLS) always are
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else None
        if self.peer is not None and self.peers.get(self.peer, 0) >= self.per_peer:
            self.peer = None
            transport.abort()
            return
        if self.peer is not None:
            self.peers[self.peer] = self.peers.get(self.peer, 0) + 1
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        GUARDS[transport] = self
        self.arm()
        self.inner.connection_made(transport)

    def arm(self, seconds: float = HEAD_TIMEOUT) -> None:
        self.disarm()
        self.timer = asyncio.get_running_loop().call_later(seconds, self._too_slow)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _too_slow(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        if self.transport is not None:
            GUARDS.pop(self.transport, None)
            if self.peer is not None:
                left = self.peers.get(self.peer, 1) - 1
                if left:
                    self.peers[self.peer] = left
                else:
                    self.peers.pop(self.peer, None)
            self.inner.connection_lost(exc)


GUARDS: dict[asyncio.BaseTransport, Guard] = {}
"""Open connections by transport, so a request handler can disarm (and an answer re-arm) its head timer."""


@web.middleware
async def head_deadline(request: web.Request, handler):
    """A request reached the application: its head arrived in time. The next one gets its own deadline."""
    guard = GUARDS.get(request.transport) if request.transport is not None else None
    if guard is not None:
        guard.disarm()
    try:
        return await handler(request)
    finally:
        if guard is not None and guard.transport is not None and not guard.transport.is_closing():
            guard.arm(KEEPALIVE_TIMEOUT)  # the next head may follow an idle keep-alive gap


class _Refused(asyncio.Protocol):
    """A connection over the cap: closed before a byte is read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.abort()


class Listener:
    def __init__(self, runner: web.AppRunner, server: asyncio.Server) -> None:
        self.runner, self.server = runner, server

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.server.close()
        await self.runner.cleanup()


async def serve(app: web.Application, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                max_connections: int = MAX_CONNECTIONS, keepalive_timeout: float = KEEPALIVE_TIMEOUT) -> Listener:
    """Listen on ``host:port``; the caller closes the returned listener."""
    quiet = logging.getLogger("collector.http")
    quiet.setLevel(logging.CRITICAL)  # aiohttp's per-request debug and client-error lines stay out of the log
    app.middlewares.insert(0, head_deadline)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=keepalive_timeout,
                           shutdown_timeout=SHUTDOWN_TIMEOUT, logger=quiet)
    await runner.setup()
    handler = runner.server
    assert handler is not None, "set up above"

    peers: dict[str, int] = {}
    per_peer = max(8, max_connections // PER_PEER_SHARE)

    def factory() -> asyncio.Protocol:
        if len(handler.connections) >= max_connections:
            return _Refused()
        return Guard(handler(), peers, per_peer)

    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(factory, host, port, ssl=ssl_context, backlog=max_connections,
                                          ssl_handshake_timeout=keepalive_timeout if ssl_context else None)
    except BaseException:
        await runner.cleanup()
        raise
    return Listener(runner, server)


async def listen(app: web.Application, address: str, **kwargs: Any) -> Listener:
    """``serve`` on a ``host:port`` setting; an address that cannot be bound is a ``ConfigError`` naming it."""
    host, port = split_listen(address)
    try:
        return await serve(app, host, port, **kwargs)
    except OSError as exc:
        raise ConfigError(f"listen: cannot listen on {address}: {exc.strerror or exc}") from None
