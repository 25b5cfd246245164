"""The simulator as a service: the fake LlamaCloud API on a listener, with live traffic."""

from __future__ import annotations

import asyncio
import random

import structlog

from collector.listener import Listener, listen
from collector.simulator.api import Faults, SimulatorApi
from collector.simulator.world import LAZY_FROM, World, populate


class SimulatorService:
    """The fake API with live traffic: ``rate`` world ticks per second."""

    def __init__(
        self,
        *,
        sessions: int = 40,
        runs: int = 3,
        seed: int = 1,
        rate: float = 2.0,
        api_key: str = "simulator",
        world: World | None = None,
        address: str = "127.0.0.1:0",
        latency: float = 0.0,
        projects: int = 1,
        lazy: bool | None = None,
    ) -> None:
        lazy = sessions >= LAZY_FROM if lazy is None else lazy  # lazy worlds by default from LAZY_FROM sessions
        self.world = world or populate(World(seed=seed, lazy=lazy), sessions, runs)
        """The default project's world."""
        self.others = tuple(populate(World(seed=seed + 1000 * p, lazy=lazy), sessions, runs) for p in range(1, projects))
        """The other projects' worlds, as many sessions each."""
        self.address = address
        self.faults = Faults()
        self.api = SimulatorApi(self.world, api_key, self.faults, latency, self.others)
        self.rate = rate
        self.server: Listener | None = None
        self._traffic: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        assert self.server is not None, "started"
        return self.server.port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _run_traffic(self) -> None:
        rng = random.Random(self.world.rng.random())
        while True:
            await asyncio.sleep(rng.expovariate(self.rate))
            if not self.api.paused:
                for world in (self.world, *self.others):
                    world.tick()

    async def start(self) -> None:
        self.server = await listen(self.api.app(), self.address, max_connections=4096)
        structlog.get_logger("simulator").info(
            "simulator listening", url=self.base_url, sessions=len(self.world.sessions), projects=1 + len(self.others)
        )
        if self.rate > 0:
            self._traffic = asyncio.create_task(self._run_traffic())

    async def stop(self) -> None:
        if self._traffic is not None:
            self._traffic.cancel()
        if self.server is not None:
            await self.server.close()
