"""One listing loop for ``check`` and the poller (issue 28, item 4; DESIGN §4): ``ListingLoop``'s rules, and the
two readers of the listing ending a looping or refusing listing the same way, in the same words."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from collector import cli
from collector.app import build_client, make_client
from collector.errors import AuthError, FetchError, PayloadError
from collector.llamacloud.listing import IDLE_PAGES, PAGE_STRIKES, ListingLoop, Strikes, read_listing
from collector.llamacloud.models import SessionPage, parse_page
from tests.fakes import poller, run_events
from tests.helpers import run_async

pytestmark = pytest.mark.tier("unit")

T0 = "2026-01-01T00:00:00+00:00"
URL = "https://api.test"


def page(ids: list[str], token: str | None) -> SessionPage:
    return parse_page(
        json.dumps({"items": [{"session_id": i, "last_updated_at": T0} for i in ids], "next_page_token": token}).encode()
    )


def everything(_) -> bool:
    return True


# the loop's rules, without I/O --------------------------------------------------------------------------------


def test_a_pass_ends_at_its_last_page_or_at_a_token_it_followed_before():
    loop = ListingLoop()
    assert loop.take(page(["a"], "x"), everything).goes_on and loop.token == "x"
    assert loop.take(page(["b"], "y"), everything).goes_on
    step = loop.take(page(["c"], "x"), everything)  # went round
    assert (step.goes_on, step.problem, loop.ended, loop.truncated, loop.pages) == (False, None, True, False, 3)
    assert loop.seen == {"a", "b", "c"} and [i.session_id for i in step.items] == ["c"]
    last = ListingLoop()
    assert not last.take(page(["a"], None), everything).goes_on and last.ended and not last.truncated


def test_a_listing_that_goes_round_with_fresh_tokens_ends_short_after_idle_pages():
    loop = ListingLoop()
    steps = [loop.take(page(["a"], f"t{n}"), everything) for n in range(IDLE_PAGES + 1)]
    assert all(s.goes_on for s in steps[:-1]) and not steps[-1].goes_on
    assert loop.ended and loop.truncated and steps[-1].problem is not None
    assert steps[-1].problem.startswith(f"list: {IDLE_PAGES} pages in a row listed no session new to the pass")


def test_items_another_reader_does_not_want_count_as_new():
    """Another shard's or index's sessions: nothing tells whether the listing went round."""
    loop = ListingLoop()
    steps = [loop.take(page(["a", "other"], f"t{n}"), lambda item: item.session_id == "a") for n in range(3 * IDLE_PAGES)]
    assert not loop.ended and all(s.goes_on and [i.session_id for i in s.items] == ["a"] for s in steps)


def test_page_1_and_a_first_failure_wait_a_refusal_starts_over_and_a_page_that_keeps_failing_ends_the_pass():
    loop = ListingLoop()
    down = FetchError("list: HTTP 503", operation="list", status=503)
    assert loop.failed(down).waits == "list: HTTP 503" and loop.strikes == Strikes()  # page 1: no strike
    loop.take(page(["a"], "t1"), everything)
    step = loop.failed(down)  # page 2, once: wait for it
    assert (step.waits, step.goes_on, step.problem, loop.strikes) == ("list: HTTP 503", False, None, Strikes(2, 1))
    loop.take(page(["b"], "t2"), everything)  # page 2 read after all: its strike is cleared
    refused = FetchError("list: HTTP 400", operation="list", status=400)
    step = loop.failed(refused)
    assert step.goes_on and step.problem == "list: page 3 refused (list: HTTP 400); the pass starts over from page 1"
    assert (loop.token, loop.pages, loop.tokens, loop.seen) == (None, 0, set(), {"a", "b"})  # the pass's seen is kept
    loop.take(page(["a"], "t1"), everything)
    loop.take(page(["b"], "t2"), everything)
    step = loop.failed(PayloadError("list: invalid payload", operation="list"))  # refused twice in a row
    keeps_failing = (
        "list: page 3 keeps failing (list: invalid payload); the pass ends there, retires nothing, "
        "and the next starts over from page 1"
    )
    assert (step.goes_on, step.problem, loop.ended, loop.truncated) == (False, keeps_failing, True, True)


def test_strikes_outlive_a_pass_and_a_page_read_past_them_clears_them():
    strikes = Strikes()
    down = FetchError("list: HTTP 503", operation="list", status=503)
    for _ in range(PAGE_STRIKES):
        loop = ListingLoop(strikes)
        loop.take(page(["a"], "t1"), everything)
        step = loop.failed(down)
    assert loop.truncated and step.problem is not None and "page 2 keeps failing" in step.problem
    again = ListingLoop(strikes)  # the next pass ends at its first failure there
    again.take(page(["a"], "t1"), everything)
    assert again.failed(down).problem is not None and again.truncated
    healed = ListingLoop(strikes)
    healed.take(page(["a"], "t1"), everything)
    healed.take(page(["b"], None), everything)
    assert strikes == Strikes()


def test_read_listing_tries_a_page_again_at_once_and_raises_page_1_and_the_key_as_they_are():
    answers: list[SessionPage | Exception] = [
        page(["a"], "t1"),
        FetchError("list: HTTP 503", operation="list", status=503),
        page(["a", "b"], None),
    ]

    async def list_page(token, deadline):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    listing = run_async(read_listing(list_page))
    assert [s.session_id for s in listing.sessions] == ["a", "b"] and listing.problems == []  # each once
    for error in (FetchError("list: HTTP 500", operation="list", status=500), AuthError("list: HTTP 401", operation="list")):
        answers[:] = [error]
        with pytest.raises(type(error), match=str(error)):
            run_async(read_listing(list_page))


# check and the poller, on one API --------------------------------------------------------------------------


def api(listing: Callable[[str | None, int], httpx.Response]) -> Callable[[httpx.Request], httpx.Response]:
    """An API whose listing answers ``listing(token, pages asked so far)``; session ``a`` has one run."""
    asked = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/chat":
            asked[0] += 1
            return listing(request.url.params.get("page_token"), asked[0])
        return httpx.Response(200, json={"session_id": "a", "last_updated_at": T0, "events": run_events()})

    return handler


def listed(token: str | None) -> httpx.Response:
    return httpx.Response(200, json={"items": [{"session_id": "a", "last_updated_at": T0}], "next_page_token": token})


def tokens_loop(token, _):
    return listed({None: "x", "x": "y", "y": "x"}[token])


def goes_round(token, asked):
    return listed(f"t{asked}")


def always_refused(token, _):
    return listed("t1") if token is None else httpx.Response(400, json={"detail": "unknown page token"})


def refused_once(token, asked):
    if token is None:
        return listed("t1")
    return httpx.Response(400, json={"detail": "unknown page token"}) if asked == 2 else listed(None)


def run_check(monkeypatch, capsys, handler) -> tuple[int, str, str]:
    transport = httpx.MockTransport(handler)
    monkeypatch.setattr(cli, "make_client", lambda config, key: make_client(config, key, None, transport))
    capsys.readouterr()  # what came before (the poller's log lines) is not check's
    code = cli.main(["check", "--base-url", URL], {"LLAMA_CLOUD_API_KEY": "llx-test-key-0123456789"})
    out, err = capsys.readouterr()
    return code, out, err


def run_poller(handler):
    from collector.settings import Settings

    client = build_client(Settings(base_url=URL), "llx-test-key-0123456789", None, httpx.MockTransport(handler))
    try:
        return run_async(poller(client).cycle())  # type: ignore[arg-type]
    finally:
        run_async(client.aclose())


GOES_ROUND = (
    f"list: {IDLE_PAGES} pages in a row listed no session new to the pass; the pass ends there, retires nothing, "
    "and the next starts over from page 1"
)
KEEPS_FAILING = (
    "list: page 2 keeps failing (list: HTTP 400); the pass ends there, retires nothing, and the next starts over from page 1"
)
REFUSED = "list: page 2 refused (list: HTTP 400); the pass starts over from page 1"


@pytest.mark.parametrize(
    "listing,ends",
    [(tokens_loop, None), (goes_round, GOES_ROUND), (always_refused, KEEPS_FAILING), (refused_once, REFUSED)],
    ids=["tokens loop", "goes round with fresh tokens", "resumed token always refused", "resumed token refused once"],
)
def test_check_and_the_poller_end_a_looping_or_refusing_listing_the_same_way(monkeypatch, capsys, listing, ends):
    report = run_poller(api(listing))
    code, out, err = run_check(monkeypatch, capsys, api(listing))
    assert report.pass_complete  # the pass ended in one cycle, as check's did
    if ends is None:  # a token seen again is the listing's end: no problem for either
        assert (report.result, report.errors) == ("success", [])
        assert code == 0 and "1 sessions would be watched" in out and "warning" not in out and err == ""
    elif ends == REFUSED:  # got over: the poller's cycle is partial, check says OK with the same words
        assert report.result == "partial" and report.errors == [ends]
        assert code == 0 and "1 sessions would be watched" in out and f"  warning: {ends}\n" in out
    else:  # ended short: the poller's cycle is partial, check fails, both with the same words
        assert report.result == "partial" and report.errors == [ends]
        assert (code, out, err) == (1, "", f"llamacloud-collector: check failed: {URL}: {ends}\n")
