"""Hostile scrapers over real sockets, against the collector as a real process fed by the simulator.

Malformed and ambiguous requests get 400 and are never read as a second
request; clients that pipeline and never read, half-sent heads, and password
guessers cannot stall /metrics, the poll cycles or memory; a flood of bad
requests is not a flood of log lines. Each test ends with the same checks:
alive, /metrics within 3 s, cycles still finishing, exact counts, sane values,
peak RSS under 400 MB, no traceback.
"""

from __future__ import annotations

import asyncio
import base64
import math
import signal

import bcrypt
import httpx

from tests.helpers import Samples, assert_samples_match, family, parse, remote_truth
from tests.stack import Processes, free_port, wait_until

MAX_RSS_MB = 400


class Stack:
    def __init__(self, procs: Processes, *args: str, sessions: int = 30) -> None:
        self.procs = procs
        sim_port, self.port = free_port(), free_port()
        self.sim = f"http://127.0.0.1:{sim_port}"
        procs.collector("sim", "simulate", "--port", str(sim_port), "--sessions", str(sessions), "--rate", "0",
                        env={"LLAMA_CLOUD_API_KEY": "k"})
        wait_until(lambda: httpx.get(self.sim + "/_sim/stats").status_code == 200, 30, "simulator")
        self.proc = procs.collector("collector", "run", "--base-url", self.sim, "--interval", "1",
                                    "--listen", f"127.0.0.1:{self.port}", "--log-format", "json", *args,
                                    env={"LLAMA_CLOUD_API_KEY": "k"})
        wait_until(lambda: httpx.get(self.url("/readyz")).status_code == 200, 30, "first sync")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def scrape(self, **kwargs) -> Samples:
        response = httpx.get(self.url("/metrics"), timeout=3, **kwargs)
        response.raise_for_status()
        return parse(response.text)

    def log_lines(self) -> int:
        return self.procs.log("collector").count("\n")

    def assert_healthy(self, **kwargs) -> None:
        """Alive, answering within 3 s, still cycling, exact, sane, bounded, and quiet about it."""
        assert self.proc.poll() is None, "the collector died"
        httpx.get(self.sim + "/_sim/touch", params={"fraction": 0.2})
        first = self.scrape(**kwargs)
        cycles = sum(family(first, "llamacloud_collector_polls_total").values())
        runs, events = remote_truth(self.sim)
        samples = wait_until(lambda: (s := self.scrape(**kwargs)) and
                             sum(family(s, "llamacloud_collector_polls_total").values()) >= cycles + 2 and s,
                             20, "two more cycles")
        assert_samples_match(samples, runs, events)
        for (name, _), v in samples.items():
            if name.startswith("llamacloud_chat_"):
                assert math.isfinite(v) and v >= 0, (name, v)
        with open(f"/proc/{self.proc.pid}/status") as status:
            peak = next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
        assert peak < MAX_RSS_MB, peak
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(15) == 0
        self.procs.procs.pop("collector")
        assert "Traceback" not in self.procs.log("collector")


async def exchange(port: int, raw: bytes, wait: float = 2.0, local: str = "127.0.0.1") -> bytes:
    """Send raw bytes, read whatever comes back until the server closes or ``wait`` passes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
    chunks = []
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(wait):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
    except (TimeoutError, ConnectionError):  # past its share, a flooding peer is reset at once
        pass
    writer.close()
    return b"".join(chunks)


ATTACKER = "127.0.0.2"
"""Another loopback address: the attack comes from another peer than the scrapes and probes, as in a cluster."""


async def hold(port: int, count: int, payload: bytes) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``count`` connections that each send ``payload`` and then neither send nor read anything more
    (those past the per-peer share are closed by the server at once)."""
    held = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ATTACKER, 0))
        writer.write(payload)
        held.append((reader, writer))
    return held


MALFORMED = {
    "content_length_text": b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "content_length_negative": b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "double_content_length": b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 38\r\n\r\n"
                             b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n",
    "te_and_cl": b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"0\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad_request_line": b"GET /metrics HTTP/9.9 extra\r\n\r\n",
    "header_without_colon": b"GET /metrics HTTP/1.1\r\nHost x\r\n\r\n",
    "control_in_path": b"GET /met\x01rics HTTP/1.1\r\nHost: x\r\n\r\n",
    "huge_header": b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
    "bare_lf_smuggle": b"GET /healthz HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n\n0\n\nGET /readyz HTTP/1.1\n\n",
}


def test_malformed_and_ambiguous_requests_get_400_and_no_second_request(procs):
    stack = Stack(procs)
    for name, raw in MALFORMED.items():
        answer = asyncio.run(exchange(stack.port, raw))
        assert answer.split(b" ", 2)[1] in (b"400", b"413", b"431"), (name, answer[:200])
        assert b" 200 OK\r\n" not in answer, f"{name}: a smuggled second request was answered"
    chunked_body = (b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"21\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n")
    answer = asyncio.run(exchange(stack.port, chunked_body))
    assert answer.count(b"HTTP/1.1 ") == 1 and b"ready" not in answer  # the body is a body, not a request
    for method in (b"PUT", b"DELETE", b"OPTIONS", b"TRACE"):
        answer = asyncio.run(exchange(stack.port, method + b" /metrics HTTP/1.1\r\nHost: x\r\n\r\n", wait=0.5))
        assert answer.startswith(b"HTTP/1.1 405"), (method, answer[:100])
    stack.assert_healthy()


def test_a_flood_of_bad_requests_is_a_bounded_number_of_log_lines(procs):
    stack = Stack(procs)
    before = stack.log_lines()

    async def flood():
        async def one(i):
            await exchange(stack.port, MALFORMED[list(MALFORMED)[i % len(MALFORMED)]], wait=1, local=ATTACKER)
        await asyncio.gather(*(one(i) for i in range(600)))
    asyncio.run(flood())
    cycles_logged = 8  # about one poll-cycle line a second while the flood runs
    assert stack.log_lines() - before < 60 + cycles_logged
    stack.assert_healthy()


def test_pipelining_clients_that_never_read_cannot_stall_scrapes_cycles_or_memory(procs):
    """900 clients from 900 addresses (past any per-peer share) pipeline 200 scrapes of a 600 kB answer each
    and never read; then they leave mid-answer. Every probe is answered within 3 s throughout (a connection
    burst past the listen backlog was reset), and leaving is not an error line (it was one per client)."""
    stack = Stack(procs, sessions=3000)
    before = stack.log_lines()

    async def attack():
        held = []
        for i in range(900):
            peer = f"127.0.{1 + i // 200}.{1 + i % 200}"
            reader, writer = await asyncio.open_connection("127.0.0.1", stack.port, local_addr=(peer, 0))
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 200)  # never read
            held.append((reader, writer))
        statuses = []
        async with httpx.AsyncClient(timeout=3) as http:
            for _ in range(12):
                response = await http.get(stack.url("/metrics"), headers={"Connection": "close"})
                statuses.append(response.status_code)
                await asyncio.sleep(0.5)
        return held, statuses
    loop = asyncio.new_event_loop()
    held, statuses = loop.run_until_complete(attack())

    async def leave():
        for _, writer in held:
            writer.transport.abort()  # gone mid-answer (an answer gives up on a client only after 10 s)
        await asyncio.sleep(0)  # the loop closes the sockets (a reset each)
    loop.run_until_complete(leave())
    loop.close()
    assert statuses == [200] * 12
    stack.assert_healthy()
    lines = stack.procs.log("collector").splitlines()[before:]
    assert [line for line in lines if '"level": "error"' in line] == []


def test_half_sent_heads_are_dropped_and_do_not_block_others(procs):
    stack = Stack(procs)

    async def slowloris():
        held = await hold(stack.port, 200, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # head unfinished
        answer = await asyncio.to_thread(httpx.get, stack.url("/metrics"), timeout=3)
        assert answer.status_code == 200
        closed = await asyncio.wait_for(held[0][0].read(), 30)  # dropped after the head timeout
        return closed, held
    closed, _held = asyncio.run(slowloris())
    assert closed == b""
    stack.assert_healthy()


def test_password_guessers_cannot_slow_a_legitimate_scrape(procs, tmp_path):
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=11)).decode()
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  prom: '{hashed}'\n")
    stack = Stack(procs, "--web-config", str(config))
    good = ("prom", "right")
    assert httpx.get(stack.url("/metrics"), auth=good, timeout=10).status_code == 200  # pays bcrypt once

    async def guess():
        stop = asyncio.Event()

        async def guesser(i: int):
            async with httpx.AsyncClient(timeout=30) as http:
                while not stop.is_set():
                    user = "prom" if i % 2 else f"user{i}"  # known and unknown users cost the same
                    await http.get(stack.url("/metrics"), auth=(user, f"guess{i}"))
        tasks = [asyncio.create_task(guesser(i)) for i in range(20)]
        await asyncio.sleep(1)
        statuses = []
        for _ in range(5):
            response = await asyncio.to_thread(httpx.get, stack.url("/metrics"), auth=good, timeout=3)
            statuses.append(response.status_code)
        unauth = await asyncio.to_thread(httpx.get, stack.url("/healthz"), timeout=3)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        return statuses, unauth.status_code
    statuses, health = asyncio.run(guess())
    assert statuses == [200] * 5 and health == 200
    token = base64.b64encode(b"prom:right").decode()
    stack.assert_healthy(headers={"Authorization": f"Basic {token}"})


def test_a_slow_head_attack_from_one_peer_leaves_scrapes_and_probes_served(procs):
    """1,100 connections from one peer, each sending a header byte every second: every scrape and probe
    from another peer is answered, the attacker holds at most its share, and its heads time out."""
    stack = Stack(procs)

    async def attack():
        held = []
        for _ in range(1100):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", stack.port, local_addr=(ATTACKER, 0))
            except OSError:
                continue
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            held.append((reader, writer))

        async def trickle():
            for _ in range(12):
                await asyncio.sleep(1)
                for _, writer in held:
                    if not writer.transport.is_closing():
                        writer.write(b"X")
        trickling = asyncio.create_task(trickle())
        ok = 0
        async with httpx.AsyncClient(timeout=3) as http:
            for i in range(20):
                path = "/metrics" if i % 2 else "/healthz"
                ok += (await http.get(stack.url(path))).status_code == 200
                await asyncio.sleep(0.5)
        await trickling
        alive = sum(1 for _, w in held if not w.transport.is_closing() and w.transport.get_extra_info("socket") is not None)
        closed = 0
        for reader, _ in held:
            try:
                closed += await asyncio.wait_for(reader.read(1), 0.05) == b""
            except ConnectionError:
                closed += 1  # reset: refused past the share, or aborted at the head timeout
            except TimeoutError:
                pass
        for _, writer in held:
            writer.transport.abort()
        return ok, len(held), closed, alive
    ok, opened, closed, _ = asyncio.run(attack())
    assert ok == 20, ok  # every legitimate scrape and probe answered during the attack
    assert closed >= opened - 64 - 5  # past its share refused at once, the rest dropped at the head timeout
    stack.assert_healthy()
