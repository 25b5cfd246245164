"""Response bounds in-process, over httpx.MockTransport: size caps, status range, session IDs, paging limits."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from collector.app import build_client
from collector.cadence import Deadline
from collector.errors import FetchError, PayloadError
from collector.llamacloud.bounds import (
    MAX_SESSION_ID_LENGTH,
    BadStatus,
    BodyTooLarge,
    check_status,
    declared_length,
    read_capped,
    session_id_problem,
)
from collector.llamacloud.client import LlamaCloudClient, RetryPolicy, session_path
from collector.llamacloud.listing import IDLE_PAGES
from collector.metrics import SelfMetrics
from collector.settings import Settings
from tests.helpers import run_async

pytestmark = pytest.mark.tier("unit")

SESSION: dict[str, Any] = {"session_id": "s1", "last_updated_at": "2026-01-01T00:00:00+00:00", "events": []}


def streamed(body: bytes, headers: dict | None = None, chunk: int = 1000) -> httpx.Response:
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]

    class Stream(httpx.AsyncByteStream):
        async def __aiter__(self):
            for piece in pieces:
                yield piece

    return httpx.Response(200, headers=headers or {}, stream=Stream())


def read(response: httpx.Response, limit: int) -> bytes:
    return run_async(read_capped(response, limit))


def test_a_body_exactly_at_the_cap_is_read_and_one_byte_more_is_refused():
    assert read(streamed(b"x" * 5000), 5000) == b"x" * 5000
    with pytest.raises(BodyTooLarge):
        read(streamed(b"x" * 5001), 5000)


def test_a_declared_length_over_the_cap_is_refused_before_reading():
    class Never(httpx.AsyncByteStream):
        async def __aiter__(self):
            raise AssertionError("the body was read")
            yield b""  # pragma: no cover

    with pytest.raises(BodyTooLarge, match="Content-Length 4000000000"):
        read(httpx.Response(200, headers={"Content-Length": "4000000000"}, stream=Never()), 1 << 20)
    assert read(streamed(b"ok", {"Content-Length": "2"}), 2) == b"ok"


@pytest.mark.parametrize(
    "value,want", [("12", 12), ("0", 0), ("", None), ("-5", None), ("abc", None), ("1e3", None), ("+7", None), ("0x1F", None)]
)
def test_declared_length_takes_only_a_plain_non_negative_integer(value, want):
    assert declared_length(httpx.Response(200, headers={"Content-Length": value} if value else {}).headers) == want


def test_a_gzip_bomb_stops_at_the_cap_on_the_decoded_size():
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = packer.compress(bytes(64 << 20)) + packer.flush()  # 64 MiB of zeros in about 64 KiB
    assert len(bomb) < 200_000
    with pytest.raises(BodyTooLarge):
        read(streamed(bomb, {"Content-Encoding": "gzip"}, chunk=16384), 1 << 20)
    small = gzip.compress(b"y" * 1000)
    assert read(streamed(small, {"Content-Encoding": "gzip"}), 1000) == b"y" * 1000


def test_the_wire_size_counts_too():
    compressed = gzip.compress(bytes(range(256)) * 400)  # does not compress well: wire size near body size
    with pytest.raises(BodyTooLarge):
        read(streamed(compressed, {"Content-Encoding": "gzip"}), len(compressed) - 1)


@pytest.mark.parametrize(
    "status,ok", [(99, False), (100, True), (200, True), (599, True), (600, False), (0, False), (10**20, False)]
)
def test_status_codes_outside_100_to_599_are_protocol_errors(status, ok):
    if ok:
        assert check_status(status) == status
    else:
        with pytest.raises(BadStatus):
            check_status(status)


@pytest.mark.parametrize(
    "session_id,problem",
    [
        ("s1", None),
        ("a/b", None),
        ("...", None),
        ("ünï", None),
        ("x" * MAX_SESSION_ID_LENGTH, None),
        ("x" * (MAX_SESSION_ID_LENGTH + 1), "257 characters"),
        (".", "relative"),
        ("..", "relative"),
        ("", "empty"),
        ("a\nb", "control"),
        ("a\x00", "control"),
    ],
)
def test_session_ids_that_cannot_name_a_session(session_id, problem):
    found = session_id_problem(session_id)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_a_session_id_is_one_encoded_path_segment():
    assert session_path("a/b?c#d e") == "/api/v1/chat/a%2Fb%3Fc%23d%20e"
    assert session_path("s1", "/summary") == "/api/v1/chat/s1/summary"
    for bad in (".", ".."):
        with pytest.raises(ValueError):
            session_path(bad)


def client_for(handler, registry: CollectorRegistry, **kwargs) -> LlamaCloudClient:
    async def no_sleep(_):
        return None

    return build_client(
        Settings(base_url="https://api.test"),
        "k",
        SelfMetrics(registry),
        httpx.MockTransport(handler),
        sleep=no_sleep,
        rng=lambda: 0.0,
        retry=RetryPolicy(max_attempts=2),
        **kwargs,
    )


def test_a_refused_id_is_never_requested_and_counts_as_invalid():
    seen = []
    registry = CollectorRegistry()

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=SESSION)

    client = client_for(answer, registry)
    with pytest.raises(PayloadError, match="relative"):
        run_async(client.retrieve(".."))
    assert seen == []
    assert registry.get_sample_value("llamacloud_collector_invalid_payloads_total", {"operation": "retrieve"}) == 1


def test_an_answer_that_names_another_session_is_invalid():
    registry = CollectorRegistry()
    client = client_for(lambda r: httpx.Response(200, json={**SESSION, "session_id": "s2"}), registry)
    with pytest.raises(PayloadError, match="another session"):
        run_async(client.retrieve("s1"))
    assert registry.get_sample_value("llamacloud_collector_invalid_payloads_total", {"operation": "retrieve"}) == 1


def test_an_oversized_answer_is_invalid_and_not_retried():
    calls = []
    registry = CollectorRegistry()
    body = json.dumps({**SESSION, "pad": "p" * 100_000}).encode()

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, content=body)

    client = client_for(answer, registry, max_response_bytes=65536)
    with pytest.raises(PayloadError, match="too large"):
        run_async(client.retrieve("s1"))
    assert len(calls) == 1
    assert registry.get_sample_value("llamacloud_collector_api_requests_total", {"operation": "retrieve", "code": "error"}) == 1


def test_an_endless_listing_ends_where_it_goes_round_never_at_a_page_count():
    """No page cap (DESIGN §4): fresh tokens that list nothing new end the listing after ``IDLE_PAGES`` pages, in the
    poller's words (the same loop)."""
    pages = []

    def handler(request):
        pages.append(request)
        return httpx.Response(200, json={"items": [], "next_page_token": f"t{len(pages)}"})

    client = client_for(handler, CollectorRegistry())
    with pytest.raises(FetchError, match=f"^list: {IDLE_PAGES} pages in a row listed no session new to the pass; "):
        run_async(client.list_sessions())
    assert len(pages) == IDLE_PAGES


def test_the_cycle_deadline_is_checked_between_pages():
    now = [0.0]

    def handler(request):
        now[0] += 10.0  # each page takes ten seconds
        return httpx.Response(200, json={"items": [], "next_page_token": f"t{now[0]}"})

    client = client_for(handler, CollectorRegistry(), clock=lambda: now[0])
    with pytest.raises(FetchError, match="deadline reached after 3 pages"):
        run_async(client.list_sessions(deadline=Deadline(25.0, lambda: now[0])))


def test_a_repeated_page_token_ends_the_listing():
    tokens = iter(["a", "b", "a"])
    client = client_for(lambda r: httpx.Response(200, json={"items": [], "next_page_token": next(tokens)}), CollectorRegistry())
    assert run_async(client.list_sessions()).sessions == []


def test_decoded_pieces_add_up_towards_the_cap():
    import random

    rng = random.Random(3)
    text = "".join(rng.choice("abcdefgh ") for _ in range(30_000)).encode()
    packed = gzip.compress(text)
    assert len(packed) < 20_000 < len(text)  # on the wire under the cap, decoded over it
    with pytest.raises(BodyTooLarge, match="^body is over the 20000-byte cap$"):
        read(streamed(packed, {"Content-Encoding": "gzip"}, chunk=200), 20_000)


def test_messages_say_what_is_wrong():
    with pytest.raises(BadStatus, match="^status code 100000000000 is outside 100-599$"):
        check_status(10**20)
    assert session_id_problem("") == "empty session ID"
    assert session_id_problem("a\tb") == "session ID with control characters"
    assert session_id_problem(".") == "session ID '.' is a relative path segment"


def test_large_bodies_take_turns_so_the_bodies_in_flight_stay_bounded():
    import asyncio

    from collector.llamacloud.bounds import LARGE_BODY

    body = json.dumps({**SESSION, "generated_title": "x" * (3 * LARGE_BODY)}).encode()
    in_flight: dict[str, int] = {}
    peak = [0]

    def handler(request):
        sid = request.url.path.rsplit("/", 1)[-1]

        class Stream(httpx.AsyncByteStream):
            async def __aiter__(self):
                for start in range(0, len(body), 65536):
                    in_flight[sid] = start + 65536
                    peak[0] = max(peak[0], sum(in_flight.values()))
                    await asyncio.sleep(0)
                    yield body[start : start + 65536]
                in_flight[sid] = 0  # read, and (the gate's turn) parsed next

        return httpx.Response(200, headers={"content-type": "application/json"}, stream=Stream())

    client = client_for(handler, CollectorRegistry())

    async def fetch_all():
        async def one(i):
            try:
                await client.retrieve(f"s{i}")
            except PayloadError:
                pass  # another session's answer, by design of this test

        await asyncio.gather(*(one(i) for i in range(8)))

    run_async(fetch_all())
    # one large body at a time, each of the others at most LARGE_BODY (plus a piece) while it waits
    assert peak[0] <= len(body) + 7 * (LARGE_BODY + 2 * 65536), peak[0]
    assert peak[0] < 4 * len(body)  # 8 whole bodies at once would be 8 times one


def test_a_refused_large_body_is_not_kept_by_the_failure_the_caller_holds():
    """The failure of a large body's parse (in the thread) carries the frames it passed through on the loop:
    none of them may hold the body. Four refused histories retried in turn kept 30 MB each until a full
    collection (RSS 61 -> 91 -> 124 -> 154 -> 183 MB), which the collector only runs every 10 cycles."""
    import gc
    import tracemalloc

    from collector.llamacloud.bounds import LARGE_BODY

    body = json.dumps({**SESSION, "events": [{"type": "stop"}] * (LARGE_BODY // 8)}).encode()
    client = client_for(lambda request: httpx.Response(200, content=body), CollectorRegistry(), max_events=1000)

    def apart(read):
        return read()

    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        with pytest.raises(PayloadError, match="max-events-per-session") as refused:
            run_async(client.retrieve(SESSION["session_id"], off_loop=apart))
        kept = refused.value  # what the caller holds, as the poller holds a failure it logs
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
        if enabled:
            gc.enable()
        gc.collect()
    assert kept is not None and held < len(body) // 4, f"{held} bytes held by the failure of a {len(body)}-byte body"
