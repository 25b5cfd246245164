"""The peer: the poller a user would write with the official llama-cloud SDK.

One cycle: list every session, retrieve every one, recompute the totals. Prints JSON figures.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

from llama_cloud import LlamaCloud


def cycle(client: LlamaCloud, limit: int | None = None) -> dict:
    runs: Counter[str] = Counter()
    tokens: Counter[str] = Counter()
    events: Counter[str] = Counter()
    sessions = 0
    for summary in client.chat.list(page_size=100):
        if limit is not None and sessions >= limit:
            break
        sessions += 1
        session = client.chat.retrieve(summary.session_id)
        for event in session.events:
            events[getattr(event, "type", None) or "_unknown"] += 1
            if event.type == "stop":  # every kind of event has the field (None when absent): narrows to EventStopEvent
                runs["error" if event.is_error else "success"] += 1
                tokens["input"] += event.usage.total_input_tokens or 0
                tokens["output"] += event.usage.total_output_tokens or 0
    return {"sessions": sessions, "runs": sum(runs.values()), "tokens": dict(tokens)}


def peak_rss_mb() -> float:
    """This process's own peak (ru_maxrss would carry the parent's across fork and exec)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", default="simulator")
    parser.add_argument("--limit", type=int, help="stop after this many sessions (figures are then per session)")
    args = parser.parse_args()
    client = LlamaCloud(api_key=args.api_key, base_url=args.base_url, max_retries=2)
    cpu, wall = time.process_time(), time.perf_counter()
    result = cycle(client, args.limit)
    result.update(cpu_seconds=time.process_time() - cpu, wall_seconds=time.perf_counter() - wall, peak_rss_mb=peak_rss_mb())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
