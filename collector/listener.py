"""Serving an ``aiohttp.web`` application with bounds a hostile client cannot move.

aiohttp parses every request (malformed or ambiguous ones get 400 from its parser); nothing here reads the
bytes. Around it, one ``Guard`` per connection, from ``accept`` to close, TLS handshakes included:

- **Counted at accept**, before a byte is read, against a cap that never overshoots: the check and the
  registration are one step (``Slots.admit``), so a burst of accepts cannot pass the check together.
- **A share per peer** (an IPv4 address; an IPv6 /64, which one host holds whole): at most 1/16 of the cap,
  and at most ``PER_PEER_HANDSHAKES`` TLS handshakes in progress (``MAX_HANDSHAKES`` in all). A handshake,
  including the wait for a ClientHello, gets ``HANDSHAKE_TIMEOUT``; a request head, ``HEAD_TIMEOUT``. The
  TLS layer is built at the connection's first byte, with a read buffer shared by all connections
  (asyncio's own is 256 KiB each, allocated at accept).
- **At the cap, the fewest win.** A newcomer whose peer holds no connection, or two fewer than the peer
  holding the most, takes the place of one of that peer's connections: its longest idle keep-alive, else its
  oldest one still in a handshake or head, else its oldest answer. Otherwise the newcomer is refused (two
  peers one apart would trade a place back and forth for as long as they reconnect). This is nginx's
  answer to running out of ``worker_connections`` (it closes reusable connections, idle keep-alive and
  waiting-for-request ones, oldest first: ``ngx_drain_connections``), taken from the heaviest peer so no
  one peer, or set of peers, can keep Prometheus or the kubelet out. Reserved slots were the other choice:
  a second, smaller pool, which an attacker with enough addresses fills the same way.
- **Bounded buffers per connection, so bounded in total** (Envoy's ``per_connection_buffer_limit_bytes``;
  32 KiB on an edge): a connection is read in ``READ_PIECE`` bites, and not at all while a request of it is
  in the application or an answer of it has not left the process, so a client whose earlier answers are
  unread gets no new one (``gate``); each connection holds at most one piece of answer (``drained``); the
  kernel's buffers are fixed per socket (``SEND_BUFFER``, ``RECEIVE_BUFFER``) rather than autotuned to MiBs.
- **A connection given up on is reset** (nginx's ``reset_timedout_connection``): refused, evicted, or timed
  out, its socket is closed with an RST, so the kernel frees its buffers now rather than keeping the unsent
  answer of a client that does not read in FIN-WAIT-1 for minutes. (An idle keep-alive, which holds nothing,
  is closed plainly.)

No access log (a flood of requests is not a flood of lines), and no traceback for anything a client can cause.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import ssl
import struct
import time
from asyncio import sslproto
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from collector.errors import ConfigError
from collector.settings import split_listen

MAX_CONNECTIONS = 1024
KEEPALIVE_TIMEOUT = 15.0
SHUTDOWN_TIMEOUT = 2.0
HEAD_TIMEOUT = 5.0
"""A connection must bring a whole request head within this long of opening, or of its TLS handshake (after
an answer, within the keep-alive timeout); the application's first sight of a request disarms it."""
HANDSHAKE_TIMEOUT = 5.0
"""From accept to a finished TLS handshake: a scraper in the cluster needs milliseconds (nginx allows 60 s,
Envoy's listener filters 15 s; both are edge proxies facing the internet's slow clients)."""
TLS_SHUTDOWN_TIMEOUT = 5.0
"""A TLS close waits this long for the peer's close_notify (asyncio's default is 30 s, holding the slot)."""
SEND_TIMEOUT = 10.0
"""An answer, and an earlier answer the client has not read yet, must leave the process within this long."""
SEND_BUFFER = 64 * 1024
"""The kernel's send buffer for one connection (Linux doubles it for bookkeeping). Left to autotuning it grows
to 4 MiB: 633 clients that never read held 1.5 GiB of socket memory (charged to the pod's cgroup) and the loop
spent its time copying answers into it. 64 KiB (128 KiB doubled) still moves about 100 MB/s at a 1 ms round
trip; across regions (60 ms) a scrape gets about 2 MB/s."""
RECEIVE_BUFFER = 16 * 1024
"""The kernel's receive buffer (set on the listening socket, so the window is sized from the SYN): requests
are heads of a few hundred bytes, and a connection is not read while its answer is pending, so what a
client pipelines waits in at most this much kernel memory, not in an autotuned 6 MiB."""
READ_PIECE = 1024
"""What one read takes from a plain connection (asyncio reads 256 KiB): aiohttp parses at most this much of
pipelined requests at a time, into at most 32 waiting requests."""
TLS_READ_PIECE = 18 * 1024
"""What one read takes from a TLS connection: one TLS record (16 KiB of text plus its overhead)."""
BACKLOG = 128
"""The kernel's queue of connections not yet accepted, at least (a burst past it waits for SYN retries)."""
ACCEPT_BATCH = 16
"""Connections taken from the kernel's queue in one turn of the loop. asyncio takes as many as the listen
backlog (1,024) in one go, and each is an open socket, not yet counted, until its ``connection_made`` two turns
later: a burst at the cap was seen holding 1,092 sockets for an instant. In batches of 16 (nginx takes one per
event), at most two batches (32) are open and not yet counted, and the rest wait in the kernel's queue, which
stays long (``BACKLOG``)."""
PER_PEER_SHARE = 16
"""One peer holds at most 1/16 of the connection cap (64 of 1,024): a slow-head attacker from one host
cannot lock out Prometheus and the kubelet, which connect from others."""
PER_PEER_HANDSHAKES = 8
"""TLS handshakes in progress from one peer (a scraper or a probe opens one at a time)."""
MAX_HANDSHAKES = 128
"""TLS handshakes in progress in all (one costs about 55 KiB once its ClientHello is in, 3 KiB before): past
it, a newcomer from a peer with fewer in progress takes the place of the oldest of the peer with the most."""
RESET = struct.pack("ii", 1, 0)
"""SO_LINGER on, 0 s: close() sends an RST and drops what the socket still holds."""

HANDSHAKE, HEAD, IDLE, BUSY = "handshake", "head", "idle", "busy"
EVICTION_ORDER = {IDLE: 0, HEAD: 1, HANDSHAKE: 1, BUSY: 2}
"""Which connection of the heaviest peer gives way: an idle keep-alive (the least loss: its client reconnects
when it next needs it), then one that has not brought a request yet, then one whose answer is being written."""

_PLAIN_BUFFER = memoryview(bytearray(READ_PIECE))
_TLS_BUFFER = bytearray(TLS_READ_PIECE)
_TLS_VIEW = memoryview(_TLS_BUFFER)
"""One read buffer for all connections of a kind: a read is copied out (plain) or fed to the TLS layer's
memory BIO (TLS) before the next one, all on the event loop's thread."""


def peer_key(peername: Any) -> str:
    """Who a connection counts against: its IPv4 address, or the /64 of its IPv6 address (one host gets a /64,
    so 16 addresses of it must not be 16 shares). An IPv4-mapped IPv6 address is the IPv4 address."""
    if not isinstance(peername, tuple) or not peername:
        return ""
    host = str(peername[0]).split("%", 1)[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return str(address)


def reset(transport: asyncio.Transport | None) -> None:
    """Close with an RST: nothing it still holds is kept for a client that does not read."""
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
        except OSError:
            pass
    transport.abort()


class _TlsProtocol(sslproto.SSLProtocol):
    """asyncio's TLS layer, reading into the shared buffer: its own is a 256 KiB bytearray per connection,
    allocated at accept (3,000 idle TLS connections held 750 MiB of them)."""

    max_size = TLS_READ_PIECE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ssl_buffer = _TLS_BUFFER  # read from in buffer_updated, right after the read that filled it
        self._ssl_buffer_view = _TLS_VIEW


class _Inner(asyncio.Transport):
    """The socket's transport as the protocol inside a guard sees it (aiohttp's, or the TLS layer's): its
    wish to pause reading is combined with the guard's; everything else is the socket's."""

    def __init__(self, raw: asyncio.Transport, guard: Guard) -> None:
        super().__init__()
        self.raw, self.guard = raw, guard
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.raw.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self.raw.is_closing()

    def close(self) -> None:
        self.raw.close()

    def abort(self) -> None:
        self.raw.abort()

    def _force_close(self, exc: BaseException | None) -> None:  # what asyncio's TLS layer calls on a fatal error
        self.raw._force_close(exc)  # type: ignore[attr-defined]

    def write(self, data: Any) -> None:
        self.raw.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self.raw.writelines(list_of_data)

    def write_eof(self) -> None:
        self.raw.write_eof()

    def can_write_eof(self) -> bool:
        return self.raw.can_write_eof()

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.raw.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """The guard's limits stay (any pending byte pauses the writer): it is what bounds an answer."""

    def is_reading(self) -> bool:
        return not self.paused and self.raw.is_reading()

    def pause_reading(self) -> None:
        self.paused = True
        self.guard.update_reading()

    def resume_reading(self) -> None:
        self.paused = False
        self.guard.update_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.guard.inner = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        protocol: asyncio.BaseProtocol = self.guard.inner  # aiohttp's handler, or the TLS layer around it
        return protocol


class Guard(asyncio.BufferedProtocol):
    """One accepted connection: its place among the slots, its timers, its reads, and the protocol inside
    (aiohttp's, or the TLS layer with aiohttp's inside it)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.key = ""
        self.tls = server.ssl_context is not None
        self.state = HANDSHAKE if self.tls else HEAD
        self.shaking = self.tls
        """Counted among its peer's handshakes in progress."""
        self.since = 0.0
        self.transport: asyncio.Transport | None = None
        self.view: _Inner | None = None
        self.inner: Any = None
        self.handler: Any = None
        self.timer: asyncio.TimerHandle | None = None
        self.reading = True
        self.writing_paused = False
        self.waiters: list[asyncio.Future[None]] = []
        self.admitted = False

    # --- the socket's side (asyncio.BufferedProtocol) ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a stream server's transports always are
        self.transport = transport
        self.key = peer_key(transport.get_extra_info("peername"))
        self.since = time.monotonic()
        if not self.server.slots.admit(self):
            reset(transport)
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        transport.set_write_buffer_limits(high=0)  # any byte not taken by the kernel pauses the writer
        self.view = _Inner(transport, self)
        if self.tls:
            self.arm(HANDSHAKE_TIMEOUT)  # the TLS layer is built at the first byte (get_buffer)
        else:
            self.arm(HEAD_TIMEOUT)
            self.handler = self.inner = self.server.handler()
            self.server.slots.by_handler[self.handler] = self
            self.inner.connection_made(self.view)

    def _start_tls(self) -> None:
        assert self.view is not None and self.server.ssl_context is not None
        self.handler = self.server.handler()
        self.server.slots.by_handler[self.handler] = self
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.add_done_callback(self._handshake_done)
        self.inner = _TlsProtocol(
            asyncio.get_running_loop(),
            self.handler,
            self.server.ssl_context,
            done,
            server_side=True,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT,
        )
        self.inner.connection_made(self.view)

    def _handshake_done(self, done: asyncio.Future[None]) -> None:
        if done.cancelled() or done.exception() is not None or not self.admitted:
            return  # failed, or closed (asyncio's TLS layer then says "done" too): connection_lost let go of it
        self.server.slots.handshake_over(self)
        if self.state == HANDSHAKE:  # (a request may have begun already: this runs soon, not at once)
            self.state, self.since = HEAD, time.monotonic()
            self.arm(HEAD_TIMEOUT)

    def get_buffer(self, sizehint: int) -> Any:
        if not self.tls:
            return _PLAIN_BUFFER
        if self.inner is None:
            self._start_tls()
        return self.inner.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        if self.tls:
            self.inner.buffer_updated(nbytes)
        else:
            self.inner.data_received(bytes(_PLAIN_BUFFER[:nbytes]))

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else False

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.inner is not None:
            self.inner.pause_writing()
        self.update_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.inner is not None:
            self.inner.resume_writing()  # the TLS layer may write what it held, and pause again
        if not self.writing_paused:
            self._wake()
        self.update_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        self.server.slots.release(self)
        self.server.slots.by_handler.pop(self.handler, None)
        self._wake(ConnectionResetError("connection lost"))
        if self.inner is not None:
            self.inner.connection_lost(exc)

    # --- timers, reads and writes ---

    def arm(self, seconds: float) -> None:
        self.disarm()
        self.timer = asyncio.get_running_loop().call_later(seconds, self.give_up)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def give_up(self) -> None:
        """Timed out, or evicted: let go of the slot now (connection_lost follows), and close: an idle keep-alive
        plainly, as its client expects one day; any other with a reset."""
        self.disarm()
        self.server.slots.release(self)
        if self.state == IDLE and self.transport is not None and not self.pending(None):
            self.transport.close()
        else:
            reset(self.transport)

    def update_reading(self) -> None:
        """Read while no request is in the application, no answer is pending, and the inner protocol agrees."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        want = self.state != BUSY and not self.writing_paused and not (self.view is not None and self.view.paused)
        if want != self.reading:
            self.reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def pending(self, app: asyncio.BaseTransport | None) -> int:
        """Bytes of answer still in the process: in the socket's buffer, and in the TLS layer's."""
        size = self.transport.get_write_buffer_size() if self.transport is not None else 0
        if app is not None and app is not self.view and isinstance(app, asyncio.WriteTransport):
            size += app.get_write_buffer_size()
        return size

    async def drained(self, app: asyncio.BaseTransport | None) -> None:
        """Until every byte written so far has left the process (into the kernel's send buffer)."""
        while self.pending(app):
            if self.transport is None or self.transport.is_closing():
                raise ConnectionResetError("connection closed")
            if not self.writing_paused:  # the TLS layer holds bytes the socket has room for: it writes them soon
                await asyncio.sleep(0.005)
                continue
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            await waiter

    def _wake(self, exc: BaseException | None = None) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)
                    waiter.exception()  # retrieved: a waiter whose request already left is not "never retrieved"

    def begin(self) -> None:
        """A request reached the application: no reads, no head timer, until it has been answered."""
        self.disarm()
        self.server.slots.handshake_over(self)
        self.state, self.since = BUSY, time.monotonic()
        self.update_reading()

    def end(self) -> None:
        """Answered: idle from now, for at most the keep-alive timeout; reading again once the answer left."""
        if self.transport is None or self.transport.is_closing():
            return
        self.state, self.since = IDLE, time.monotonic()
        self.arm(self.server.keepalive_timeout)
        self.update_reading()


class Slots:
    """The connections open now, by peer: admitted at accept, released when closed, timed out or evicted."""

    def __init__(self, cap: int, share: int, handshakes: int, max_handshakes: int = MAX_HANDSHAKES) -> None:
        self.cap, self.share, self.handshakes, self.max_handshakes = cap, share, handshakes, max_handshakes
        self.count = 0
        self.peers: dict[str, dict[Guard, None]] = {}
        self.handshaking: dict[str, int] = {}
        self.shaking = 0
        """TLS handshakes in progress, in all."""
        self.by_handler: dict[Any, Guard] = {}
        self.refused = 0
        self.evicted = 0

    def admit(self, guard: Guard) -> bool:
        """Check and register in one step (no await between them): the cap is never passed, whatever arrives
        together. At the cap, a peer holding fewer than the heaviest takes the place of one of its connections."""
        held = self.peers.get(guard.key)
        holds = len(held) if held else 0
        shakes = self.handshaking.get(guard.key, 0)
        if holds >= self.share or (guard.shaking and shakes >= self.handshakes):
            return self._refuse()
        if guard.shaking and self.shaking >= self.max_handshakes and not self._evict(shakes, handshakes=True):
            return self._refuse()
        if self.count >= self.cap and not self._evict(holds, handshakes=False):  # (a handshake that gave way
            return self._refuse()  # above freed a connection too: this is never a second eviction)
        self.count += 1
        self.peers.setdefault(guard.key, {})[guard] = None
        if guard.shaking:
            self.handshaking[guard.key] = shakes + 1
            self.shaking += 1
        guard.admitted = True
        return True

    def _refuse(self) -> bool:
        self.refused += 1
        return False

    def _evict(self, holds: int, handshakes: bool) -> bool:
        """Make room for a newcomer whose peer holds ``holds`` (connections, or handshakes in progress): one
        connection of the peer holding the most gives way, if that is more. False if none does."""
        sizes = self.handshaking if handshakes else {key: len(held) for key, held in self.peers.items()}
        most = max(sizes.values(), default=0)
        if most <= holds + (1 if holds else 0):
            return False  # a place moves only to a peer holding none, or to even out shares: never back and forth
        candidates = (g for key, n in sizes.items() if n == most for g in self.peers.get(key, ()) if g.shaking or not handshakes)
        victim = min(candidates, key=lambda g: (EVICTION_ORDER[g.state], g.since), default=None)
        if victim is None:
            return False
        self.evicted += 1
        victim.give_up()  # lets go of its place now
        return True

    def handshake_over(self, guard: Guard) -> None:
        if not guard.shaking:
            return
        guard.shaking = False
        self.shaking -= 1
        left = self.handshaking.get(guard.key, 1) - 1
        if left > 0:
            self.handshaking[guard.key] = left
        else:
            self.handshaking.pop(guard.key, None)

    def release(self, guard: Guard) -> None:
        if not guard.admitted:
            return
        guard.admitted = False
        self.handshake_over(guard)
        self.count -= 1
        held = self.peers.get(guard.key)
        if held is not None:
            held.pop(guard, None)
            if not held:
                del self.peers[guard.key]

    def guards(self) -> list[Guard]:
        return [g for peer in self.peers.values() for g in peer]


class Server:
    """What every guard of one listener shares."""

    def __init__(self, handler: Any, ssl_context: ssl.SSLContext | None, slots: Slots, keepalive_timeout: float) -> None:
        self.handler, self.ssl_context, self.slots = handler, ssl_context, slots
        self.keepalive_timeout = keepalive_timeout


def _guard(request: web.BaseRequest) -> Guard | None:
    slots: Slots | None = request.app.get(SLOTS) if isinstance(request, web.Request) else None
    return slots.by_handler.get(request.protocol) if slots is not None else None


@web.middleware
async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request reached the application: its head arrived in time. It is answered only once the client has
    taken the answers before it (pipelined requests wait, unread, for at most ``SEND_TIMEOUT``)."""
    guard = _guard(request)
    if guard is None:
        return await handler(request)
    guard.begin()
    try:
        if guard.pending(request.transport):
            try:
                async with asyncio.timeout(SEND_TIMEOUT):
                    await guard.drained(request.transport)
            except (TimeoutError, ConnectionError):
                guard.give_up()
                return web.Response(status=408)  # written to no one: the connection is gone
        return await handler(request)
    finally:
        guard.end()


async def drained(request: web.BaseRequest) -> None:
    """Until the answer written so far has left the process: an answer is written a piece at a time, and the
    next piece waits for this, so a client that does not read holds one piece, not the answer."""
    guard = _guard(request)
    if guard is not None:
        await guard.drained(request.transport)
    elif request.transport is not None and request.transport.get_write_buffer_size():
        await request.writer.drain()  # not served by a guard (a test's own server): aiohttp's flow control


def give_up(request: web.BaseRequest) -> None:
    """Reset the request's connection (a client that did not take its answer in time)."""
    guard = _guard(request)
    if guard is not None:
        guard.give_up()
    elif request.transport is not None:
        request.transport.abort()


SLOTS = web.AppKey("listener_slots", Slots)


class Listener:
    def __init__(self, runner: web.AppRunner, server: asyncio.Server, slots: Slots) -> None:
        self.runner, self.server, self.slots = runner, server, slots

    @property
    def port(self) -> int:
        port: int = self.server.sockets[0].getsockname()[1]  # (host, port) or (host, port, flow, scope)
        return port

    async def close(self) -> None:
        self.server.close()
        for guard in self.slots.guards():
            if guard.state == HANDSHAKE:  # aiohttp's shutdown closes the connections it knows
                guard.give_up()
        await self.runner.cleanup()
        for guard in self.slots.guards():
            guard.give_up()


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_connections: int = MAX_CONNECTIONS,
    keepalive_timeout: float = KEEPALIVE_TIMEOUT,
) -> Listener:
    """Listen on ``host:port``; the caller closes the returned listener."""
    quiet = logging.getLogger("collector.http")
    quiet.setLevel(logging.CRITICAL)  # aiohttp's per-request debug and client-error lines stay out of the log
    slots = Slots(max_connections, max(8, max_connections // PER_PEER_SHARE), PER_PEER_HANDSHAKES)
    app[SLOTS] = slots
    app.middlewares.insert(0, gate)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=keepalive_timeout,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        logger=quiet,
    )
    await runner.setup()
    handler = runner.server
    assert handler is not None, "set up above"
    shared = Server(handler, ssl_context, slots, keepalive_timeout)

    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(lambda: Guard(shared), host, port, backlog=ACCEPT_BATCH)
        for sock in server.sockets:  # accepted sockets inherit it, and the SYN's window is sized from it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            with socket.socket(fileno=os.dup(sock.fileno())) as same:  # (asyncio's wrapper has no listen())
                same.listen(max(max_connections, BACKLOG))  # the kernel's queue; asyncio's batch stays ACCEPT_BATCH
    except BaseException:
        await runner.cleanup()
        raise
    return Listener(runner, server, slots)


async def listen(app: web.Application, address: str, **kwargs: Any) -> Listener:
    """``serve`` on a ``host:port`` setting; an address that cannot be bound is a ``ConfigError`` naming it."""
    host, port = split_listen(address)
    try:
        return await serve(app, host, port, **kwargs)
    except OSError as exc:
        raise ConfigError(f"listen: cannot listen on {address}: {exc.strerror or exc}") from None
