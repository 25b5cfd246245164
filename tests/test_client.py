"""The API client over httpx.MockTransport: paging, retries, Retry-After, auth, payloads."""

import json

import httpx
import pytest
from prometheus_client import CollectorRegistry

from collector.app import build_client
from collector.cadence import Deadline
from collector.errors import AuthError, Deferred, FetchError, NotFound, PayloadError
from collector.llamacloud.client import RetryPolicy, retry_after
from collector.metrics import SelfMetrics
from collector.settings import Settings
from tests.helpers import run_async

pytestmark = pytest.mark.tier("unit")

SUMMARY = {"session_id": "s1", "last_updated_at": "2026-01-01T00:00:00+00:00", "shared_access": "query"}


class Recorder:
    def __init__(self, *answers):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def make(handler, **kwargs):
    sleeps: list[float] = []

    async def fake_sleep(seconds):
        sleeps.append(seconds)

    registry = CollectorRegistry()
    metrics = SelfMetrics(registry)
    client = build_client(
        Settings(base_url="https://api.test", project_id="p1"),
        "llx-key",
        metrics,
        httpx.MockTransport(handler),
        sleep=fake_sleep,
        rng=lambda: 1.0,
        wall_clock=lambda: 1_000_000.0,
        **kwargs,
    )
    return client, sleeps, registry


def ok(payload, status=200, **headers):
    return httpx.Response(status, json=payload, headers=headers)


def test_list_follows_page_tokens_and_passes_project():
    pages = Recorder(
        ok({"items": [SUMMARY], "next_page_token": "t1"}),
        ok({"items": [{**SUMMARY, "session_id": "s2"}], "next_page_token": None}),
    )
    client, _, registry = make(pages)
    listing = run_async(client.list_sessions())
    assert [s.session_id for s in listing.sessions] == ["s1", "s2"] and listing.unreadable == []
    first, second = pages.requests
    assert first.url.params["page_size"] == "100" and "page_token" not in first.url.params
    assert second.url.params["page_token"] == "t1" and second.url.params["project_id"] == "p1"
    assert first.headers["authorization"] == "Bearer llx-key"
    assert registry.get_sample_value("llamacloud_collector_api_requests_total", {"operation": "list", "code": "200"}) == 2


def test_429_honours_retry_after_then_succeeds():
    answers = Recorder(ok({}, 429, **{"Retry-After": "7"}), ok(SUMMARY))
    client, sleeps, registry = make(answers, clock=lambda: 0.0)  # the pause ends 7 s on: slept whole
    summary = run_async(client.summary("s1"))
    assert summary.session_id == "s1" and sleeps == [7.0]
    assert registry.get_sample_value("llamacloud_collector_api_retries_total", {"operation": "summary", "reason": "429"}) == 1
    assert registry.get_sample_value("llamacloud_collector_api_requests_total", {"operation": "summary", "code": "429"}) == 1


def test_retry_after_http_date():
    assert retry_after("Thu, 01 Jan 1970 00:00:30 GMT", now=10.0) == 20.0
    assert retry_after("soon", now=0) is None and retry_after(None, now=0) is None


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_errors_retry_with_full_jitter_backoff(status):
    answers = Recorder(ok({}, status), ok({}, status), ok(SUMMARY))
    client, sleeps, _ = make(answers, retry=RetryPolicy(max_attempts=5, base_delay=0.5, max_delay=30))
    run_async(client.summary("s1"))
    assert sleeps == [1.0, 2.0]  # rng() == 1.0: the top of each jitter window, base * 2**attempt


def test_transport_errors_retry_and_are_counted_as_error():
    answers = Recorder(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), ok(SUMMARY))
    client, sleeps, registry = make(answers)
    run_async(client.summary("s1"))
    assert len(sleeps) == 2
    assert registry.get_sample_value("llamacloud_collector_api_requests_total", {"operation": "summary", "code": "error"}) == 2
    assert registry.get_sample_value("llamacloud_collector_api_retries_total", {"operation": "summary", "reason": "timeout"}) == 1


@pytest.mark.parametrize("status,error", [(401, AuthError), (403, AuthError), (404, NotFound), (500, FetchError)])
def test_no_retry_on_client_errors_and_500(status, error):
    answers = Recorder(ok({"detail": "no"}, status))
    client, sleeps, _ = make(answers)
    with pytest.raises(error) as exc:
        run_async(client.retrieve("s1"))
    assert exc.value.status == status and sleeps == [] and len(answers.requests) == 1
    assert "llx-key" not in str(exc.value)


def test_gives_up_after_max_attempts():
    answers = Recorder(ok({}, 503))
    client, sleeps, _ = make(answers, retry=RetryPolicy(max_attempts=3))
    with pytest.raises(FetchError, match="HTTP 503"):
        run_async(client.summary("s1"))
    assert len(answers.requests) == 3 and len(sleeps) == 2


def test_retry_never_sleeps_past_the_deadline():
    """A 429's pause that outlasts the deadline gives up at once and is not sent again (``Deferred``: the cycle
    carries it, as a cut cycle does, and not as a session failing on its own)."""
    answers = Recorder(ok({}, 429, **{"Retry-After": "120"}), ok(SUMMARY))
    client, sleeps, _ = make(answers, clock=lambda: 100.0)
    with pytest.raises(Deferred, match="429"):
        run_async(client.summary("s1", deadline=Deadline(150.0, lambda: 100.0)))
    assert sleeps == [] and len(answers.requests) == 1
    answers = Recorder(ok({}, 503, **{"Retry-After": "120"}), ok(SUMMARY))  # a 503's wait is its own
    client, sleeps, _ = make(answers, clock=lambda: 100.0)
    with pytest.raises(FetchError, match="503"):
        run_async(client.summary("s1", deadline=Deadline(150.0, lambda: 100.0)))
    assert sleeps == [] and len(answers.requests) == 1


@pytest.mark.parametrize(
    "response,fragment",
    [
        (httpx.Response(200, content=b"<html>oops</html>", headers={"content-type": "text/html"}), "content type"),
        (
            httpx.Response(200, content=b'{"session_id": "s1", "last_upd', headers={"content-type": "application/json"}),
            "invalid payload",
        ),
        (ok({"session_id": 5}), "invalid payload at session_id"),
    ],
)
def test_bad_payloads_raise_payload_error_and_are_counted(response, fragment):
    client, _, registry = make(Recorder(response))
    with pytest.raises(PayloadError, match=fragment):
        run_async(client.retrieve("s1"))
    assert registry.get_sample_value("llamacloud_collector_invalid_payloads_total", {"operation": "retrieve"}) == 1


def test_retrieve_parses_events_tolerantly():
    body = {
        **SUMMARY,
        "events": [
            {"type": "user_input", "content": "hi"},
            {"type": "new_kind", "x": 1},
            {"type": "stop", "is_error": False, "usage": {"turns": 1}, "extra": 2},
        ],
    }
    client, _, _ = make(
        Recorder(httpx.Response(200, content=json.dumps(body).encode(), headers={"content-type": "application/json"}))
    )
    session = run_async(client.retrieve("s1"))
    assert [e.type for e in session.events] == ["user_input", "new_kind", "stop"]


def test_a_body_that_claims_gzip_and_is_not_is_an_invalid_payload():
    def bad(request):
        return httpx.Response(
            200,
            stream=httpx.ByteStream(b"not gzip at all"),
            headers={"content-encoding": "gzip", "content-type": "application/json"},
        )

    client, _sleeps, registry = make(bad)
    with pytest.raises(PayloadError, match="undecodable"):
        run_async(client.retrieve("s1"))
    assert registry.get_sample_value("llamacloud_collector_invalid_payloads_total", {"operation": "retrieve"}) == 1


def test_a_redirect_is_not_followed_and_says_where_it_points():
    import httpx as _httpx

    from collector.errors import FetchError as _Fetch

    def handler(request):
        return _httpx.Response(301, headers={"Location": "https://api.example/api/v1/chat"})

    client = build_client(Settings(base_url="http://api.example"), "k" * 20, transport=_httpx.MockTransport(handler))
    with pytest.raises(_Fetch, match="HTTP 301 redirect to https://api.example/api/v1/chat: set --base-url"):
        run_async(client.list_page())


def test_the_private_httpx_call_the_client_relies_on_is_still_there_and_picks_the_mounted_transport():
    """client.py sends straight to the transport httpx would pick for the base URL (proxy, NO_PROXY and
    mounts applied), through httpx's private ``_transport_for_url``. If httpx renames or changes it, this
    fails first, by name: move to the public mounts API or pin httpx below that release."""
    import inspect

    assert hasattr(httpx.AsyncClient, "_transport_for_url"), "httpx moved AsyncClient._transport_for_url"
    assert list(inspect.signature(httpx.AsyncClient._transport_for_url).parameters) == ["self", "url"]
    default, special = httpx.MockTransport(lambda r: httpx.Response(200)), httpx.MockTransport(lambda r: httpx.Response(204))
    client = httpx.AsyncClient(transport=default, mounts={"https://api.special": special})
    assert client._transport_for_url(httpx.URL("https://api.special/v1")) is special
    assert client._transport_for_url(httpx.URL("https://api.other/v1")) is default


def test_a_large_body_that_trickles_gives_up_the_gate_and_the_next_one_is_read(monkeypatch):
    """Issue 27: one answer trickling (or stalled) past ``GATE_HOLD`` once it holds the large-body gate fails
    on its own ("too slow"), and the other large answers waiting for their turn are read."""
    import asyncio

    monkeypatch.setattr("collector.llamacloud.bounds.GATE_HOLD", 0.2)
    history = [{"type": "user_input", "content": "x" * 1000}, {"type": "stop", "is_error": False}] * 700
    body = json.dumps({**SUMMARY, "session_id": "fast", "events": history}).encode()  # about 1.5 MB
    stalled = asyncio.Event()

    class Trickle(httpx.AsyncByteStream):
        async def __aiter__(self):
            yield b'{"session_id": "slow", "events": [' + b" " * (2 << 20)  # past LARGE_BODY: takes the gate
            stalled.set()
            await asyncio.Event().wait()  # then nothing more, ever

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/slow"):
            return httpx.Response(200, stream=Trickle(), headers={"content-type": "application/json"})
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    client, _, _ = make(handler)

    async def scenario():
        slow = asyncio.ensure_future(client.retrieve("slow"))
        await stalled.wait()
        async with asyncio.timeout(60):  # a bound on a broken build, not a timed assertion
            fast = await client.retrieve("fast")
        with pytest.raises(PayloadError, match=r"retrieve: too slow: BodyTooSlow: body of \d+ bytes still arriving"):
            await slow
        return fast

    assert len(run_async(scenario()).events) == 1400


@pytest.mark.parametrize("pad", [0, 1 << 20], ids=["small body", "body over 1 MiB"])
def test_a_history_over_max_events_per_session_is_an_invalid_payload(pad):
    """Issue 27: ``--max-events-per-session`` bounds a history as ``--max-response-bytes`` bounds a body, on
    both parse paths; the session then fails on its own (the poller's rule for an invalid payload)."""
    events = [{"type": "user_input", "content": "q"}, {"type": "stop", "is_error": False}] * 3
    body = {**SUMMARY, "events": events, "padding": "x" * pad}
    registry = CollectorRegistry()
    client = build_client(
        Settings(base_url="https://api.test", max_events_per_session=5),
        "llx-key",
        SelfMetrics(registry),
        httpx.MockTransport(lambda request: ok(body)),
    )
    with pytest.raises(PayloadError, match=r"a history of over 5 events \(--max-events-per-session\)"):
        run_async(client.retrieve("s1"))
    within = build_client(
        Settings(base_url="https://api.test", max_events_per_session=6),
        "llx-key",
        SelfMetrics(CollectorRegistry()),
        httpx.MockTransport(lambda request: ok(body)),
    )
    assert len(run_async(within.retrieve("s1")).events) == 6
