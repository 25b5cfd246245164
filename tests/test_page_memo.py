"""The listing's memo of pages (``PageMemo``): a page read again byte for byte, its sessions unchanged, is taken
without a parse, and decides exactly what a parse would have: nothing it must fetch is skipped, every listed
session is seen by the pass, and the memo never outgrows one pass."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from collector.llamacloud import listing
from collector.llamacloud.listing import PageMemo
from collector.llamacloud.models import parse_page
from collector.selection import in_shard
from tests.fakes import FakeApi, cycle, poller, run_events, total_runs

pytestmark = pytest.mark.tier("unit")

T0 = "2026-01-01T00:00:00+00:00"
T1 = "2026-01-01T00:05:00+00:00"


def api_of(n: int, page_size: int = 10) -> FakeApi:
    api = FakeApi()
    api.page_size = page_size
    for i in range(n):
        api.put(f"s{i:03d}", T0, run_events() + run_events(failed=True))
    return api


def warmed(n: int = 25):
    """A poller that synced ``n`` sessions and took one quiet pass (which kept its pages)."""
    api = api_of(n)
    p = poller(api)
    assert cycle(p).result == "success" and cycle(p).unchanged == n
    return api, p


def test_a_quiet_pass_takes_every_page_unparsed_and_counts_the_same():
    api, p = warmed(25)
    runs, retrieves = total_runs(p), sum(api.retrieved.values())
    before = api.pages_recalled
    report = cycle(p)
    assert api.pages_recalled - before == 3 and report.pages == 3  # 25 sessions, 10 a page
    assert report.unchanged == 25 and report.fetched == 0 and report.removed == 0 and report.pass_complete
    assert total_runs(p) == runs and sum(api.retrieved.values()) == retrieves
    assert len(p.memo) == 3


def test_a_session_changed_upstream_changes_its_page_and_is_fetched():
    api, p = warmed(25)
    api.put("s012", T1, run_events() * 3)
    before = api.pages_recalled
    report = cycle(p)
    assert report.fetched == 1 and api.pages_recalled - before == 2  # its page parsed, the two others known
    assert p.state.sessions["s012"].last_updated_at == T1


def test_a_session_whose_row_changed_here_is_decided_by_a_parse_not_the_memo():
    """The page is the same bytes, but what the collector holds for one of its sessions is not what it held when
    the page was kept (here: an older stamp): the page is parsed, and the session fetched again."""
    api, p = warmed(25)
    sessions = p.state.sessions
    sessions["s004"] = replace(sessions["s004"], last_updated_at="2025-12-31T00:00:00+00:00")
    before = api.retrieved["s004"]
    report = cycle(p)
    assert api.retrieved["s004"] == before + 1 and report.unchanged == 24
    assert sessions["s004"].last_updated_at == T0


def test_a_session_to_replay_or_failing_is_never_taken_unchanged_from_the_memo():
    api, p = warmed(25)
    p.state.replay = {"s021"}  # new bucket bounds: every counted run read once more
    before = api.retrieved["s021"]
    report = cycle(p)
    assert api.retrieved["s021"] == before + 1 and report.unchanged == 24


def test_every_session_on_a_known_page_is_seen_by_the_pass_so_none_is_retired():
    api, p = warmed(25)
    for _ in range(3):  # a session missed by two complete passes in a row is retired: none is
        report = cycle(p)
        assert report.removed == 0 and report.pass_complete and len(p.state.sessions) == 25
    api.listed = [f"s{i:03d}" for i in range(25) if i != 7]  # one session gone: pages 1 and 2 differ
    cycle(p)
    report = cycle(p)
    assert report.removed == 1 and "s007" not in p.state.sessions


def test_the_memo_keeps_no_more_than_the_pages_of_the_last_pass():
    api, p = warmed(25)
    api.listed = [f"s{i:03d}" for i in range(8)]  # the listing shrinks to one page
    cycle(p)
    cycle(p)
    assert len(p.memo) == 1


class Table:
    """A table of rows as ``PageMemo`` reads one: its version moves at every change."""

    def __init__(self, rows: dict[bytes, bytes]) -> None:
        self.rows, self.version = rows, 1

    @property
    def row_at(self):
        return self.rows.get

    def set(self, key: bytes, row: bytes) -> None:
        self.rows[key] = row
        self.version += 1


class PassTokens(FakeApi):
    """A listing whose page tokens name their pass (an opaque cursor over a snapshot): no page is ever read again."""

    generation = 0

    async def list_page(self, token=None, deadline=None, recall=None):
        if token is None:
            self.generation += 1
        start = 0 if token is None else int(token.split(":")[1])
        ids = list(self.sessions)
        end = start + self.page_size
        more = f"{self.generation}:{end}" if end < len(ids) else None
        raw = json.dumps({"items": [self._summary(i) for i in ids[start:end]], "next_page_token": more}).encode()
        known = None if recall is None else recall(raw)
        self.pages_recalled += known is not None
        return known or parse_page(raw)


def test_the_memo_never_holds_more_than_one_pass_when_no_page_is_read_again():
    api = PassTokens()
    api.page_size = 10
    for i in range(100):
        api.put(f"s{i:03d}", T0, run_events())
    p = poller(api)
    sizes = []
    for _ in range(5):
        assert cycle(p).removed == 0
        sizes.append(len(p.memo))
    assert api.pages_recalled == 0 and sizes[1:] == [10, 10, 10, 10]  # 19 when a pass kept the last one's too


def test_a_fixed_hash_seed_makes_the_body_digest_a_keyed_blake2b(monkeypatch):
    body = b'{"items": []}'
    assert listing._HASH_KEYED and listing.body_digest(body) == hash(body)
    monkeypatch.setattr(listing, "_HASH_KEYED", False)
    digest = listing.body_digest(bytearray(body))
    assert isinstance(digest, bytes) and len(digest) == 16 and digest != listing.body_digest(body + b" ")


def test_a_page_with_an_unreadable_item_is_not_kept_and_other_bytes_are_parsed():
    memo, table, free = PageMemo(), Table({}), lambda page: False
    body = b'{"items": [{"session_id": "s1", "last_updated_at": "t"}, {"session_id": "..", "last_updated_at": "t"}]}'
    assert memo.recall(None, body, table, free) is None
    page = parse_page(body)
    assert page.unreadable == ("..",)
    memo.record(None, page, (b"s1",), (b"row",), table.version)
    assert len(memo) == 0  # a page with an item it could not read is parsed every time
    good, row = b'{"items": [{"session_id": "s1", "last_updated_at": "t"}]}', b"row"
    table.set(b"s1", row)
    memo.recall(None, good, table, free)
    memo.record(None, parse_page(good), (b"s1",), (row,), table.version)
    assert memo.recall(None, good, table, free) is not None
    assert memo.recall(None, good, table, lambda page: True) is None  # one of its sessions blocked: parsed
    memo.recall(None, good, table, free)
    memo.record(None, parse_page(good), (b"s1",), (row,), table.version)
    assert memo.recall(None, good + b" ", table, free) is None  # other bytes: parsed
    assert memo.recall(None, good, table, free) is None  # and forgotten


def test_a_change_elsewhere_in_the_table_checks_the_rows_once_and_a_change_of_its_own_drops_the_page():
    memo, free = PageMemo(), lambda page: False
    body, row = b'{"items": [{"session_id": "s1", "last_updated_at": "t"}]}', b"row"
    table = Table({b"s1": row, b"s2": b"other"})
    memo.recall(None, body, table, free)
    memo.record(None, parse_page(body), (b"s1",), (row,), table.version)
    table.set(b"s2", b"changed")  # another session: the page's own row is still the same object
    known = memo.recall(None, body, table, free)
    assert known is not None and known.version == table.version  # checked once, at this version
    table.set(b"s1", bytes(bytearray(row)))  # the same bytes, another object: a change, as far as it knows
    assert memo.recall(None, body, table, free) is None


def test_a_shard_keeps_its_own_sessions_of_a_known_page_and_retires_none_of_the_others():
    api = api_of(30)
    p = poller(api, shard=1, total_shards=3)
    mine = {sid for sid in api.sessions if in_shard(p.config, sid)}
    for _ in range(4):
        report = cycle(p)
        assert report.removed == 0 and set(p.state.sessions) == mine
    assert api.pages_recalled >= 3 and report.unchanged == len(mine)
