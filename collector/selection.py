"""Which sessions a collector watches, and which answers it takes: its settings for a cycle, its shard,
the ``--index-id`` filter, and change detection (what is unchanged, and the test that tells a lagging
replica from a new history)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from collector.aggregates import Buckets
from collector.llamacloud.models import Listed, Summary
from collector.runlog import LogRuns
from collector.state import SessionState, parse_timestamp

Found = Listed | Summary
"""A session as discovery found it: a listing item, or a configured ID's summary."""


@dataclass(frozen=True)
class PollConfig:
    """A poller's settings: no defaults of its own, built by ``collector.wiring.wire``."""

    interval: float
    discover: bool
    session_ids: tuple[str, ...]
    index_ids: tuple[str, ...]
    shard: int
    total_shards: int
    max_concurrency: int
    series_limit: int
    buckets: Buckets
    label_limit: int
    log_runs: LogRuns
    page_size: int


def shard_of(session_id: str, total_shards: int) -> int:
    """Stable shard of a session: the same on every pod and every restart."""
    digest = hashlib.sha256(session_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % total_shards


def in_shard(config: PollConfig, session_id: str) -> bool:
    return config.total_shards == 1 or shard_of(session_id, config.total_shards) == config.shard


def wanted(config: PollConfig, summary: Found) -> bool:
    """This collector's shard, and (for discovered sessions) bound to one of the ``--index-id`` indexes."""
    if not in_shard(config, summary.session_id):
        return False
    if summary.session_id in config.session_ids:
        return True
    return not config.index_ids or any(i in config.index_ids for i in summary.index_ids)


def filters_nothing(config: PollConfig) -> bool:
    """Every listed session is ``wanted``: one shard, no ``--index-id``."""
    return config.total_shards == 1 and not config.index_ids


def is_unchanged(prev: SessionState, summary: Found) -> bool:
    """The listing shows the ``last_updated_at`` the session was counted at: nothing to fetch."""
    return prev.last_updated_at == summary.last_updated_at


def same_instant(answer: str, listed: str) -> bool:
    """A ``retrieve`` answer of the version the listing showed: the same text, or the same instant written
    another way (``Z`` for ``+00:00``). Anything else (a lagging replica, a clock put back, a time that does
    not parse) is keyed on the answer's own time, so that the listing's version is read next cycle."""
    if answer == listed:
        return True
    ta, tb = parse_timestamp(answer), parse_timestamp(listed)
    return ta is not None and ta == tb


def older(last_updated_at: str, prev: SessionState) -> bool:
    """A response older than what was already counted: a lagging replica, not a new history."""
    ts = parse_timestamp(last_updated_at)
    return ts is not None and prev.updated_ts is not None and ts < prev.updated_ts
