"""One session of ~100,000 events, fetched and derived by the collector in a fresh process.

Prints JSON: payload bytes, RSS before and at peak, and the ratio of the growth to the payload.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx

from bench.peer import peak_rss_mb
from collector.app import CollectorService
from collector.settings import load_settings


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def run(base_url: str, events: int) -> dict:
    settings = load_settings({"base_url": base_url, "listen": "127.0.0.1:0", "interval": 3600.0, "log_level": "warning"}, {})
    collector = CollectorService(settings, "simulator")
    await collector.start(schedule=False)
    await collector.poller.cycle()  # warm-up on a small session: imports, caches, pools
    big = await asyncio.to_thread(lambda: httpx.get(base_url + "/_sim/big", params={"events": events}, timeout=600).json())
    before = rss_mb()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the high-water mark, so the peak below is this cycle's
    cpu = time.process_time()
    report = await collector.poller.cycle()
    cpu = time.process_time() - cpu
    peak = peak_rss_mb()
    await collector.stop()
    return {
        **big,
        "runs_added": report.runs_added,
        "result": report.result,
        "rss_before_mb": before,
        "peak_rss_mb": peak,
        "cpu_seconds": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.base_url, args.events))))


if __name__ == "__main__":
    main()
