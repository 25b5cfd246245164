"""Bounds on what an upstream answer may be: size, status, and the session IDs it names.

Every answer is hostile until checked. The body is read in pieces, decoded by
the library that read it (aiohttp, or httpx for an injected transport), and the
read stops as soon as either the bytes on the wire or the decoded bytes pass
``limit``: a gzip bomb or a lying ``Content-Length`` costs at most one piece
past the cap. Nothing here parses HTTP; aiohttp and httpx do that.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import Executor
from typing import Any, TypeVar

import httpx

A = TypeVar("A")
R = TypeVar("R")

DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
"""DESIGN §6: with ``LargeBodies``, the bodies in flight together fit the chart's 256 Mi limit with room."""
LARGE_BODY = 1 << 20
"""Past this many bytes a body waits for its turn: one large body at a time, read and parsed."""
GATE_HOLD = 10.0
"""Seconds a body may take to arrive once it holds the gate (32 MiB at 3.2 MB/s): one that trickles or
stalls gives the turn up and fails on its own, so it never holds back every other large session."""


class LargeBodies:
    """The gate of large bodies for one client: each fetch holds at most ``LARGE_BODY`` until it takes its
    turn, so the bodies in flight are bounded by one cap plus ``LARGE_BODY`` per fetch, whatever
    ``--max-concurrency`` is (8 fetches of 32 MiB answers were 1.3 GB of RSS before)."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    def claim(self) -> Claim:
        return Claim(self._lock)


class Claim:
    """One request's turn at the gate: taken when its body grows large, released once it is parsed."""

    __slots__ = ("_handed", "_held", "_lock", "until")

    def __init__(self, lock: asyncio.Lock) -> None:
        self._lock, self._held, self._handed = lock, False, False
        self.until = 0.0
        """The loop time by which the body must have arrived, once the gate is held."""

    @property
    def held(self) -> bool:
        return self._held

    async def take(self) -> None:
        if not self._held:
            await self._lock.acquire()
            self._held = True
            self.until = asyncio.get_running_loop().time() + GATE_HOLD

    def release(self) -> None:
        if self._held and not self._handed:
            self._let_go()

    def _let_go(self) -> None:
        if self._held:
            self._held = False
            self._lock.release()

    async def in_thread(self, executor: Executor, fn: Callable[[A], R], arg: A) -> R:
        """``fn(arg)`` in ``executor``. The turn is held until it returns, even when the caller gives up
        first (a cycle's deadline): a thread cannot be stopped, and the memory it holds is the gate's."""
        box = [arg]  # the executor keeps its arguments a while after the call: it keeps an empty box
        del arg  # a failure raised here carries this frame: it must not carry the body too
        future = asyncio.get_running_loop().run_in_executor(executor, _unboxed, fn, box)
        self._handed = True
        future.add_done_callback(self._thread_done)
        return await asyncio.shield(future)

    def _thread_done(self, future: asyncio.Future[Any]) -> None:
        self._let_go()
        if not future.cancelled():
            future.exception()  # retrieved, also when no one awaits it any more


def _unboxed(fn: Callable[[A], R], box: list[A]) -> R:
    """``_bare(fn, box.pop())``: the worker's own reference to its arguments (its work item, dropped only
    after the loop has been told) is to the emptied box, not to the body."""
    return _bare(fn, box.pop())


def _bare(fn: Callable[[A], R], arg: A) -> R:
    """``fn(arg)``, whose failure carries no traceback: the frames of a parse hold the body, its text and the
    events parsed so far (hundreds of MB), and an exception kept a while (or caught in a reference cycle that
    ``gc.freeze`` then keeps) would keep them too."""
    try:
        return fn(arg)
    except Exception as exc:  # noqa: BLE001 - raised again, bare
        error = exc
    del arg
    error.__context__ = error.__cause__ = None  # an exception it replaced holds the same frames
    try:
        raise error.with_traceback(None)
    finally:
        del error  # else this frame, in the traceback raised, and ``error`` hold each other: a cycle


MAX_SESSION_ID_LENGTH = 256
"""Real IDs are UUIDs (36 characters); a longer one is not a session ID but an attack on labels and paths."""


class BodyTooLarge(Exception):
    """The body, on the wire or decoded, is larger than the configured cap."""


class BodyTooSlow(Exception):
    """A large body that did not arrive within ``GATE_HOLD`` of taking its turn."""


class BadStatus(Exception):
    """A status code outside 100-599: a protocol error, never a label value."""


def check_status(status: int) -> int:
    if not 100 <= status <= 599:
        raise BadStatus(f"status code {str(status)[:12]} is outside 100-599")
    return status


def declared_length(headers: Mapping[str, str]) -> int | None:
    """The ``Content-Length`` the server announced, when it is a plain non-negative integer (``headers``: the
    response's, or a mapping of their lower-case names)."""
    value = headers.get("content-length", "")
    return int(value) if value.isascii() and value.isdigit() else None


async def read_capped(
    response: httpx.Response, limit: int, claim: Claim | None = None, headers: Mapping[str, str] | None = None
) -> bytearray:
    """The decoded body, or ``BodyTooLarge`` as soon as it (or its wire size) passes ``limit``.

    With a ``claim``, a body that passes ``LARGE_BODY`` waits for its turn before it reads on. A body sent
    without ``Content-Encoding`` is read as it came (``aiter_raw``: the same bytes, without httpx's decoder
    and chunker between, a sixth of an idle listing's CPU); an encoded one is decoded."""
    headers = response.headers if headers is None else headers
    refuse_before_reading(headers, limit)
    raw = "content-encoding" not in headers and not response.is_stream_consumed  # (a body in memory is read whole)
    pieces = aiter(response.aiter_raw() if raw else response.aiter_bytes())
    return await read_pieces(pieces, limit, claim, lambda: response.num_bytes_downloaded)


ENCODINGS = frozenset({"", "identity", "gzip"})
"""The ``Content-Encoding`` a body may come in: none, or the gzip the client asks for (``Accept-Encoding``)."""


class Undecodable(ValueError):
    """A body in an encoding the client did not ask for, or that its encoding does not decode."""


def refuse_before_reading(headers: Mapping[str, str], limit: int) -> None:
    """What a body's head already refuses, on both wires alike: ``BodyTooLarge`` when the ``Content-Length``
    announced is over ``limit``; ``Undecodable`` for a ``Content-Encoding`` other than ``ENCODINGS`` (httpx
    would decode deflate, aiohttp would wait out a cut deflate body until the deadline, and neither decodes
    br or zstd here)."""
    declared = declared_length(headers)
    if declared is not None and declared > limit:
        raise BodyTooLarge(f"Content-Length {declared} is over the {limit}-byte cap")
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding not in ENCODINGS:
        raise Undecodable(f"Content-Encoding {encoding[:40]!r} was not asked for (only gzip)")


async def read_pieces(pieces: AsyncIterator[bytes], limit: int, claim: Claim | None, wire: Callable[[], int]) -> bytearray:
    """The decoded ``pieces`` joined, or ``BodyTooLarge`` as soon as they, or the bytes on the ``wire`` so
    far, pass ``limit``; a large body waits for the ``claim``'s turn, then must arrive within ``GATE_HOLD``.
    What both transports read through (httpx's stream, or aiohttp's own)."""
    body = bytearray()  # grown in place (a large block is remapped, not copied): never the pieces and their join
    size = 0
    while True:
        try:
            if claim is not None and claim.held:  # holding the gate: the body arrives in time, or lets go
                gate = asyncio.timeout_at(claim.until)
                try:
                    async with gate:
                        piece = await anext(pieces)
                except TimeoutError:
                    if not gate.expired():  # the transport's own read timeout (aiohttp's is a TimeoutError)
                        raise
                    raise BodyTooSlow(
                        f"body of {size} bytes still arriving {GATE_HOLD:g} s after it took its turn for large bodies"
                    ) from None
            else:
                piece = await anext(pieces)
        except StopAsyncIteration:
            break
        size += len(piece)
        if size > limit or wire() > limit:
            raise BodyTooLarge(f"body is over the {limit}-byte cap")
        body += piece
        if claim is not None and size > LARGE_BODY:
            await claim.take()
    return body


def session_id_problem(session_id: str) -> str | None:
    """Why ``session_id`` cannot name a session (None when it can).

    It goes into the URL as one percent-encoded path segment, so any character
    is safe there, but ``.`` and ``..`` would be normalised away and send the
    authenticated request elsewhere.
    """
    if not session_id:
        return "empty session ID"
    if len(session_id) > MAX_SESSION_ID_LENGTH:
        return f"session ID of {len(session_id)} characters (over {MAX_SESSION_ID_LENGTH})"
    if session_id in (".", ".."):
        return f"session ID {session_id!r} is a relative path segment"
    if not session_id.isprintable():
        return "session ID with control characters"
    return None
