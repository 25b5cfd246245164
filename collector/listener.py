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
import ssl

from aiohttp import web

MAX_CONNECTIONS = 1024
KEEPALIVE_TIMEOUT = 15.0
SHUTDOWN_TIMEOUT = 2.0


class _Refused(asyncio.Protocol):
    """A connection over the cap: closed before a byte is read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
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
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=keepalive_timeout,
                           shutdown_timeout=SHUTDOWN_TIMEOUT, logger=quiet)
    await runner.setup()
    handler = runner.server

    def factory() -> asyncio.Protocol:
        if len(handler.connections) >= max_connections:
            return _Refused()
        return handler()

    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(factory, host, port, ssl=ssl_context, backlog=128,
                                          ssl_handshake_timeout=keepalive_timeout if ssl_context else None)
    except BaseException:
        await runner.cleanup()
        raise
    return Listener(runner, server)
