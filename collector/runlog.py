"""One log line per counted run (``--log-runs``): failed runs by default, for log search.

Lines are written only after the cycle that counted the runs has committed and
persisted its state, so a restart never logs a run twice (a cycle abandoned
before its commit logs nothing; its runs are counted, and logged, by the next).
History counted by a first full sync (or a re-derivation) is not logged: a
memory-only collector re-derives it on every start and cannot know what an
earlier process already logged. The error text is cut to 500 characters and
goes through the same secret redaction as every other log line.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from collector.derive import RunRecord

LogRuns = Literal["failed", "all", "none"]


def wanted(mode: LogRuns, run: RunRecord) -> bool:
    return mode == "all" or (mode == "failed" and run.failed)


MAX_LINES_PER_CYCLE = 300
"""Run lines one cycle writes at most; the rest are one line that says how many (a flood of failures must
not become a flood of logs on the event loop)."""


def log_runs(
    log: Any, mode: LogRuns, counted: Iterable[tuple[str, RunRecord]], limit: int = MAX_LINES_PER_CYCLE, left_out: int = 0
) -> int:
    """Write a line for each run ``mode`` asks for, at most ``limit``; returns how many were written.
    ``left_out`` more were wanted but not kept (a large history keeps at most ``limit``)."""
    written, skipped = 0, left_out
    for session_id, run in counted:
        if not wanted(mode, run):
            continue
        if written >= limit:
            skipped += 1
            continue
        fields = {
            "session_id": session_id,
            "duration_seconds": run.duration_seconds,
            "input_tokens": run.input_tokens,
            "output_tokens": run.output_tokens,
            "turns": run.turns,
            "tool_calls": len(run.tool_calls),
        }
        if run.failed:
            log.warning("chat run failed", error_type=run.error_type, error=run.error, **fields)
        else:
            log.info("chat run finished", **fields)
        written += 1
    if skipped:
        log.warning(
            "more runs not logged this cycle",
            count=skipped,
            limit=limit,
            note="every run is counted; only its log line was left out",
        )
    return written
