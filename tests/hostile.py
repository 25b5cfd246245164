"""A hostile LlamaCloud API: a raw asyncio server that answers like the real one until told to misbehave.

It serves a simulator ``World`` (good sessions, with ground truth) byte by byte,
so it can break HTTP framing in ways no well-kept server library would. One
session, ``HOSTILE_ID``, is listed with a new ``last_updated_at`` on every
listing once a ``mode`` is set, so the collector fetches it every cycle and
meets the fault every cycle; the listing itself misbehaves in the list modes.
Runs in its own thread with its own event loop. A test double, not a product.
"""

from __future__ import annotations

import asyncio
import json
import threading
import zlib
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote

from collector.simulator.world import World, populate

HOSTILE_ID = "hostile-0001"
ODD_IDS = ("a/b", "%2e%2e", "sp ace", "ünï-cödé", "?q=1#f", "...", "a..b", "-" * 200)
"""Strange but valid session IDs: each must be fetched as one path segment and counted."""

BAD_NUMBERS = {"duration_ms": -5, "total_input_tokens": 10**400, "total_output_tokens": float("nan"), "turns": 1e309}


def _head(status: str, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def ok(body: bytes, **extra: str) -> bytes:
    return _head("200 OK", {"Content-Type": "application/json", "Content-Length": str(len(body)), **extra}) + body


def _gzip_bomb(size: int) -> bytes:
    """``size`` zero bytes, gzipped (about a thousandth of the size), without holding them."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    out = [packer.compress(block) for _ in range(size >> 20)]
    return b"".join(out) + packer.flush()


class HostileApi:
    def __init__(self, sessions: int = 12, runs: int = 2, seed: int = 5) -> None:
        self.world = populate(World(seed=seed), sessions, runs)
        for odd in (*ODD_IDS, HOSTILE_ID):
            session = self.world.new_session()
            del self.world.sessions[session.session_id]
            session.session_id = odd
            self.world.sessions[odd] = session
            self.world.add_run(session)
        self.mode: str | None = None
        self.touches = 0
        self.requests: dict[str, int] = {}
        self.extra_truth: list[dict] = []
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        self.bomb = b""
        self.url = ""
        """Its address, ``http://127.0.0.1:<port>``: set by whoever starts it (``start`` returns the port)."""

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> int:
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", 0))
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)
        assert self.server is not None, "the hostile server did not start within 10 s"
        return self.server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def shutdown() -> None:
            assert self.server is not None, "stop() before start()"
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()  # not left to the GC, which would warn of an unclosed loop in a later test

    def prepare(self, mode: str) -> None:
        """Work a mode needs before it can answer at once (a 1 GiB gzip bomb takes seconds to pack)."""
        if mode == "gzip_bomb" and not self.bomb:
            self.bomb = _gzip_bomb(1 << 30)

    def call(self, fn, *args):
        """Run ``fn`` on the server's loop (the world is not shared across threads)."""
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            box.append(fn(*args))
            done.set()

        self.loop.call_soon_threadsafe(run)
        done.wait(10)
        return box[0] if box else None

    # --- HTTP, by hand ---------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                target = head.split(b" ", 2)[1].decode("latin-1")
                path, _, query = target.partition("?")
                keep = await self._answer(path, {k: v[-1] for k, v in parse_qs(query).items()}, writer)
                await writer.drain()
                if not keep:
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    async def _answer(self, path: str, query: dict[str, str], writer: asyncio.StreamWriter) -> bool:
        parts = path.strip("/").split("/")
        if parts == ["api", "v1", "projects"]:  # the key's one project, named (it is hostile in its chat only)
            writer.write(ok(json.dumps([{"id": "hostile-project", "name": "Hostile", "is_default": True}]).encode()))
            return True
        kind = "list" if len(parts) == 3 else "retrieve"
        self.requests[kind] = self.requests.get(kind, 0) + 1
        if kind == "list":
            return await self._list(query, writer)
        session_id = unquote(parts[3])
        if session_id == HOSTILE_ID and self.mode is not None and not self.mode.startswith("list_"):
            return await self._hostile(writer)
        session = self.world.sessions.get(session_id)
        if session is None:
            writer.write(_head("404 Not Found", {"Content-Length": "0"}))
            return True
        writer.write(ok(session.detail_bytes()))
        return True

    def _summaries(self) -> list[dict]:
        items = [s.summary() for s in self.world.sessions.values()]
        if self.mode is not None:
            self.touches += 1
            stamp = datetime.fromtimestamp(1_900_000_000 + self.touches, UTC).isoformat()
            items = [{**item, "last_updated_at": stamp} if item["session_id"] == HOSTILE_ID else item for item in items]
        return items

    async def _list(self, query: dict[str, str], writer: asyncio.StreamWriter) -> bool:
        items, mode = self._summaries(), self.mode
        if mode == "list_long_id":
            items.append({"session_id": "x" * 70_000, "last_updated_at": "2026-01-01T00:00:00+00:00"})
        elif mode == "list_relative_ids":
            items += [{"session_id": i, "last_updated_at": "2026-01-01T00:00:00+00:00"} for i in (".", "..", "")]
        elif mode == "list_deep":
            body = b'{"items": ' + b"[" * 100_000 + b"]" * 100_000 + b', "next_page_token": null}'
            writer.write(ok(body))
            return True
        elif mode == "list_endless":
            page = int(query.get("page_token") or 0)
            endless = {"items": items if page == 0 else [], "next_page_token": str(page + 1)}
            writer.write(ok(json.dumps(endless).encode()))
            return True
        writer.write(ok(json.dumps({"items": items, "next_page_token": None}).encode()))
        return True

    async def _hostile(self, writer: asyncio.StreamWriter) -> bool:
        mode = self.mode
        real = self.world.sessions[HOSTILE_ID].detail_bytes()
        if mode == "content_length_text":
            writer.write(_head("200 OK", {"Content-Type": "application/json", "Content-Length": "abc"}) + real)
        elif mode == "content_length_negative":
            writer.write(_head("200 OK", {"Content-Type": "application/json", "Content-Length": "-5"}) + real)
        elif mode == "content_length_double":
            writer.write(
                _head(
                    "200 OK",
                    {"Content-Type": "application/json", "Content-Length": str(len(real)), "content-length": str(len(real) + 7)},
                )
                + real
            )
        elif mode == "content_length_huge":
            writer.write(_head("200 OK", {"Content-Type": "application/json", "Content-Length": "4000000000"}))
            writer.write(real)
            await asyncio.sleep(30)
        elif mode == "chunk_not_hex":
            writer.write(_head("200 OK", {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}))
            writer.write(b"zz\r\n" + real + b"\r\n0\r\n\r\n")
        elif mode == "status_huge":
            writer.write(b"HTTP/1.1 99999999999999999999 Weird\r\nContent-Length: 2\r\n\r\n{}")
        elif mode == "status_low":
            writer.write(b"HTTP/1.1 042 Odd\r\nContent-Length: 2\r\n\r\n{}")
        elif mode == "trickle":
            writer.write(_head("200 OK", {"Content-Type": "application/json", "Content-Length": str(len(real))}))
            for byte in real:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(2)
        elif mode == "gzip_bomb":
            writer.write(ok(self.bomb, **{"Content-Encoding": "gzip"}))
        elif mode == "oversize":
            body = real[:-1] + b', "pad": "' + b"p" * (6 << 20) + b'"}'
            writer.write(ok(body))
        elif mode == "deep":
            nested = b"[" * 100_000 + b"]" * 100_000
            body = (
                b'{"session_id": "' + HOSTILE_ID.encode() + b'", "last_updated_at": "2026-01-01T00:00:00",'
                b' "generated_title": "' + b"t" * (1 << 20) + b'", "events": [{"type": "text", "content": ' + nested + b"}]}"
            )
            writer.write(ok(body))
        elif mode == "other_session":
            other = next(s for s in self.world.sessions.values() if s.session_id != HOSTILE_ID)
            writer.write(ok(other.detail_bytes()))
        elif mode == "bad_numbers":
            detail = json.loads(real)
            detail["events"] += [
                {"type": "user_input", "content": "q"},
                {"type": "stop", "is_error": False, "usage": BAD_NUMBERS},
            ]
            writer.write(ok(json.dumps(detail).encode()))  # Python writes NaN and Infinity, as a broken API might
        elif mode == "continue_first":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(real))
        elif mode == "no_content":
            writer.write(_head("204 No Content", {}))
        elif mode == "trailers":
            writer.write(
                _head("200 OK", {"Content-Type": "application/json", "Transfer-Encoding": "chunked", "Trailer": "X-Checksum"})
            )
            writer.write(f"{len(real):x}\r\n".encode() + real + b"\r\n0\r\nX-Checksum: abc\r\n\r\n")
        elif mode == "reset":
            writer.transport.abort()
            return False
        else:
            raise AssertionError(f"unknown mode {mode}")
        return mode in ("continue_first", "no_content", "trailers", "bad_numbers", "other_session")
