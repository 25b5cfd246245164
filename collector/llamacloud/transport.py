"""A lean HTTP/1.1 transport for httpx on asyncio streams.

httpcore's async pool costs about 0.75 ms of CPU per request on this kind of
machine (bench/); this transport does what the LlamaCloud API needs (GET,
keep-alive, Content-Length or chunked bodies, TLS) for a fraction of that.
It plugs in as ``httpx.AsyncClient(transport=...)``, so the client code, its
errors and ``MockTransport`` tests stay the same. With a proxy configured in
the environment, ``build_transport`` returns None and httpx's own transport
(which honours proxies) is used.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections import defaultdict

import httpx

PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy")
MAX_HEAD = 64 * 1024
PIECE = 256 * 1024

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class LeanTransport(httpx.AsyncBaseTransport):
    def __init__(self, *, max_connections: int = 8, connect_timeout: float = 5.0, read_timeout: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._limit = asyncio.Semaphore(max_connections)
        self._idle: dict[tuple[str, str, int], list[Connection]] = defaultdict(list)
        self._connect_timeout, self._read_timeout = connect_timeout, read_timeout
        self._ssl = ssl_context

    async def _connect(self, scheme: str, host: str, port: int) -> Connection:
        context = None
        if scheme == "https":
            context = self._ssl or ssl.create_default_context()
        try:
            async with asyncio.timeout(self._connect_timeout):
                return await asyncio.open_connection(host, port, ssl=context,
                                                     server_hostname=host if context else None, limit=MAX_HEAD)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connect to {host}:{port} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from None

    async def _read(self, awaitable):
        try:
            async with asyncio.timeout(self._read_timeout):  # no extra task, unlike wait_for
                return await awaitable
        except TimeoutError:
            raise httpx.ReadTimeout("read timed out") from None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        head = [f"{request.method} {url.raw_path.decode('ascii')} HTTP/1.1"]
        head += [f"{k.decode('latin-1')}: {v.decode('latin-1')}" for k, v in request.headers.raw]
        payload = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        async with self._limit:
            reused = bool(self._idle[key])
            conn = self._idle[key].pop() if reused else await self._connect(*key)
            try:
                status, headers, body, keep = await self._exchange(conn, payload)
            except _StaleConnection:
                conn[1].close()
                if not reused:
                    raise httpx.RemoteProtocolError("server disconnected without sending a response") from None
                conn = await self._connect(*key)  # a pooled connection the server had closed: once more
                try:
                    status, headers, body, keep = await self._exchange(conn, payload)
                except _StaleConnection:
                    conn[1].close()
                    raise httpx.RemoteProtocolError("server disconnected without sending a response") from None
            except BaseException:
                conn[1].close()
                raise
            if keep:
                self._idle[key].append(conn)
            else:
                conn[1].close()
        return httpx.Response(status, headers=headers, content=body, request=request)

    async def _exchange(self, conn: Connection, payload: bytes) -> tuple[int, list, bytes, bool]:
        reader, writer = conn
        try:
            writer.write(payload)
            await writer.drain()
            raw = await self._read(reader.readuntil(b"\r\n\r\n"))
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _StaleConnection() from None
            raise httpx.RemoteProtocolError("connection closed in the response head") from None
        except (ConnectionError, BrokenPipeError):
            raise _StaleConnection() from None
        except asyncio.LimitOverrunError:
            raise httpx.RemoteProtocolError("response head too large") from None
        lines = raw.decode("latin-1").split("\r\n")
        try:
            version, code, *_ = lines[0].split(" ", 2)
            status = int(code)
        except ValueError:
            raise httpx.RemoteProtocolError(f"bad status line {lines[0][:80]!r}") from None
        headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:] if ":" in line]
        lookup = {k.lower(): v for k, v in headers}
        try:
            if lookup.get("transfer-encoding", "").lower() == "chunked":
                body = await self._chunked(reader)
            elif "content-length" in lookup:
                body = await self._exactly(reader, int(lookup["content-length"]))
            else:
                body = await self._read(reader.read())
                lookup["connection"] = "close"
        except asyncio.IncompleteReadError:
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body") from None
        except ConnectionError as exc:
            raise httpx.ReadError(f"connection lost: {exc}") from None
        keep = version == "HTTP/1.1" and lookup.get("connection", "").lower() != "close"
        headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
        return status, headers, body, keep

    async def _exactly(self, reader: asyncio.StreamReader, length: int) -> bytes:
        """``length`` bytes, read in pieces so a large body is held about once, not copied thrice."""
        if length <= PIECE:
            return await self._read(reader.readexactly(length))
        pieces, left = [], length
        while left:
            piece = await self._read(reader.read(min(PIECE, left)))
            if not piece:
                raise asyncio.IncompleteReadError(b"", left)
            pieces.append(piece)
            left -= len(piece)
        return b"".join(pieces)

    async def _chunked(self, reader: asyncio.StreamReader) -> bytes:
        parts = []
        while True:
            size = int((await self._read(reader.readuntil(b"\r\n"))).split(b";")[0], 16)
            if size == 0:
                await self._read(reader.readuntil(b"\r\n"))
                return b"".join(parts)
            parts.append(await self._read(reader.readexactly(size)))
            await self._read(reader.readexactly(2))

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for _, writer in connections:
                writer.close()
        self._idle.clear()


class _StaleConnection(Exception):
    """The server closed a pooled connection before answering; retry once on a new one."""


def build_transport(max_connections: int, connect_timeout: float, read_timeout: float,
                    environ=os.environ) -> LeanTransport | None:
    if any(environ.get(var) for var in PROXY_VARS):
        return None
    return LeanTransport(max_connections=max_connections, connect_timeout=connect_timeout,
                         read_timeout=read_timeout)
