"""The endpoints in-process: /healthz liveness on an injected clock, Accept-Encoding q-values, the render cache."""

import base64
import gzip
import socket

import pytest
from prometheus_client import CollectorRegistry, Counter

from collector.auth import WebConfig
from collector.cadence import Cadence
from collector.server import Endpoints, MetricsCache, accepts_gzip


class FakePoller:
    cycle_started = None
    cycle_finished = None


def test_healthz_fails_when_no_cycle_started_or_finished_for_three_intervals():
    now = [1000.0]
    poller = FakePoller()
    endpoints = Endpoints(CollectorRegistry(), poller, cadence=Cadence(60.0), web_config=WebConfig(None),
                          monotonic=lambda: now[0])
    assert endpoints.alive()  # just started
    now[0] += 3 * 60 + 10
    assert not endpoints.alive()  # no cycle ever started: a stuck loop
    poller.cycle_started = now[0]
    assert endpoints.alive()
    now[0] += 150
    assert endpoints.alive()  # a long cycle, within 3 intervals
    now[0] += 40
    assert not endpoints.alive()  # started 190 s ago and never finished: stuck
    poller.cycle_finished = now[0]
    assert endpoints.alive()


@pytest.mark.parametrize("header,want", [
    ("gzip", True), ("GZIP", True), ("deflate, gzip;q=0.5", True), ("x-gzip", True),
    ("gzip;q=0", False), ("gzip; q=0.000", False), ("gzip;q=0, *;q=1", False),
    ("*", True), ("*;q=0", False), ("identity", False), ("", False), ("br, deflate", False),
    ("gzip;q=bogus", False), ("notgzip", False), ("gzip;level=1", True),
])
def test_accept_encoding_honours_q_values(header, want):
    assert accepts_gzip(header) is want


def test_metrics_are_rendered_once_per_snapshot_and_format():
    registry = CollectorRegistry()
    counter = Counter("things", "Things.", registry=registry)
    cache = MetricsCache(registry)
    first = object()
    plain, text_type = cache.body(first, "", False)
    counter.inc()
    again, _ = cache.body(first, "text/plain", False)
    zipped, _ = cache.body(first, "", True)
    assert again is plain and gzip.decompress(zipped) == plain and cache.renders == 1
    assert b"things_total 0.0" in plain  # the snapshot's page, not re-rendered per scrape
    om, om_type = cache.body(first, "application/openmetrics-text; version=1.0.0", False)
    assert om_type.startswith("application/openmetrics-text") and text_type.startswith("text/plain")
    assert om.endswith(b"# EOF\n") and cache.renders == 2
    fresh, _ = cache.body(object(), "", False)
    assert b"things_total 1.0" in fresh and cache.renders == 3


def test_an_unknown_user_costs_a_bcrypt_check_like_a_known_one_and_a_right_password_is_remembered(tmp_path):
    import bcrypt

    from collector.auth import _cost
    from tests.helpers import run_async

    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=5)).decode()
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  prom: '{hashed}'\n")
    web = WebConfig(path)

    def check(user: str, password: str) -> bool:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return run_async(web.authorized(f"Basic {token}"))
    assert _cost(web._dummy.decode()) == 5  # the dummy hash has the users' cost
    assert not check("nobody", "guess") and web.bcrypt_checks == 1
    assert not check("prom", "guess") and web.bcrypt_checks == 2
    assert check("prom", "right") and web.bcrypt_checks == 3
    assert check("prom", "right") and web.bcrypt_checks == 3  # remembered: no second bcrypt
    assert not check("prom", "wrong") and web.bcrypt_checks == 4  # a failure is never remembered
    assert not run_async(web.authorized("Bearer x")) and not run_async(web.authorized("Basic !!!"))
    web.close()


def test_a_connection_over_the_cap_is_closed_at_once(tmp_path):
    import asyncio

    from aiohttp import web as aioweb

    from collector.listener import serve

    async def scenario():
        async def ok(_):
            return aioweb.Response(text="ok")
        app = aioweb.Application()
        app.router.add_get("/", ok)
        listener = await serve(app, "127.0.0.1", 0, max_connections=2, keepalive_timeout=30)
        try:
            held = [await asyncio.open_connection("127.0.0.1", listener.port) for _ in range(2)]
            await asyncio.sleep(0.1)
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            assert await asyncio.wait_for(reader.read(), 5) == b""  # refused: closed before a byte
            reader, writer = held[0]
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await asyncio.wait_for(reader.readuntil(b"ok"), 5)).startswith(b"HTTP/1.1 200")
            for _, w in held:
                w.close()
        finally:
            await listener.close()
    asyncio.run(scenario())


def test_each_connection_has_a_bounded_kernel_send_buffer():
    """Autotuned, one never-reading client held 2.4 MB of socket memory (900 of them, 1.5 GiB)."""
    import asyncio

    from aiohttp import web as aioweb

    from collector import listener as listening

    async def scenario():
        listener = await listening.serve(aioweb.Application(), "127.0.0.1", 0, max_connections=300)
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            while not listening.GUARDS:  # noqa: ASYNC110 - the server's accept callback fills it
                await asyncio.sleep(0.01)
            (guard,) = listening.GUARDS.values()
            sock = guard.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) <= 2 * listening.SEND_BUFFER  # Linux doubles
            writer.close()
        finally:
            await listener.close()
    asyncio.run(scenario())


def test_the_render_cache_holds_at_most_four_bodies_whatever_clients_send():
    registry = CollectorRegistry()
    Counter("things", "Things.", registry=registry).inc()
    cache = MetricsCache(registry)
    snapshot = object()
    types = set()
    for i in range(1000):
        for gz in (False, True):
            _, content_type = cache.body(snapshot, f"application/openmetrics-text; version=1.0.{i}; escaping=x{i}", gz)
            types.add(content_type)
            cache.body(snapshot, f"text/plain; version=0.0.{i}", gz)
    assert len(cache.bodies) <= 4 and cache.renders == 2
    (only,) = types  # one content type, never the client's words
    assert only.startswith("application/openmetrics-text; version=1.0.0") and "escaping=x" not in only


def test_a_bcrypt_password_over_72_bytes_is_compared_on_its_first_72_as_go_does(tmp_path):
    import bcrypt

    from tests.helpers import run_async

    long = "p" * 72 + "-rest-ignored"
    hashed = bcrypt.hashpw(long.encode()[:72], bcrypt.gensalt(rounds=4)).decode()
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  prom: '{hashed}'\n")
    web = WebConfig(path)

    def check(password: str) -> bool:
        token = base64.b64encode(f"prom:{password}".encode()).decode()
        return run_async(web.authorized(f"Basic {token}"))
    assert check(long) and check("p" * 72 + "anything") and not check("p" * 71)
    web.close()
