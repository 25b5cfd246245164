"""The live web config: TLS context, extra headers, and basic auth that cannot stall the server.

bcrypt runs in a small thread pool, never on the event loop. An unknown user is
checked against a dummy hash of the same cost, so a guess costs the same whoever
it names. A password verified once is remembered (as a digest keyed by the
user's hash, so it outlives a reload that keeps that hash), so a legitimate
scraper pays bcrypt once, not every scrape; a password found wrong is remembered
too, and refused again without bcrypt.

A flood of wrong credentials cannot take the checks a known user needs: at most
``MAX_PENDING`` checks wait or run, at most ``PER_PEER_PENDING`` of them from one
peer (an IPv4 address, an IPv6 /64), and the checks of peers whose credentials
were wrong within ``SUSPECT_FOR``, like a peer's checks past its first waiting
one, wait behind the others; when every place is taken, a newcomer from a peer
without failures or checks waiting takes the place of the newest of those. What is refused is counted by reason (``missing``,
``wrong``, ``busy``) and logged at most once a minute.

The file is re-read when it, or a certificate, key or client CA file it names, changes (cert-manager
rotates the pair a Secret mounts without touching the web config): users, headers and the certificate
pair take effect; a bad new file or pair is logged and the last good one stays. A change is seen by
``os.stat`` (device, inode, size, mtime, ctime) at every check, and by content at the periodic check:
two writes within one clock tick, of the same size, have the same stat.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import os
import ssl
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from collector.errors import ConfigError
from collector.webconfig import WebConfigFile, parse_web_config, ssl_context

MAX_PENDING = 16
"""bcrypt checks waiting or running, in all: past that a request is refused at once (401), not queued."""
PER_PEER_PENDING = 4
"""... of them from one peer (a scraper sends one scrape at a time)."""
BCRYPT_THREADS = 2
MAX_REMEMBERED = 64
MAX_WRONG_REMEMBERED = 4096
"""Passwords found wrong (as digests, 32 bytes each), the oldest forgotten first."""
SUSPECT_FOR = 60.0
"""Seconds a peer whose credentials were wrong waits behind the others."""
MAX_SUSPECTS = 4096
LOG_EVERY = 60.0
"""At most one line about refused credentials per this many seconds (a flood is not a flood of lines)."""


@dataclass(eq=False)
class _Check:
    """One bcrypt check, waiting or running; ``result`` is True or False from bcrypt, None if it gave way."""

    peer: str
    password: bytes
    target: bytes
    result: asyncio.Future[bool | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def _credentials(header: str | None) -> tuple[str, str] | None:
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        name, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return (name, password) if sep else None


def _cost(hashed: str) -> int:
    return int(hashed.split("$")[2])


class WebConfig:
    def __init__(
        self, path: Path | None, refused: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self.on_refused = refused
        """Told the reason of each refusal (the self-metric)."""
        self.clock = clock
        self.log = structlog.get_logger("collector.web")
        self._stats: dict[Path, Stat | None] = {}
        self._digests: dict[Path, bytes | None] = {}
        self._observe([path] if path else [])  # before reading: a write after it is seen
        self.file = parse_web_config(path) if path else WebConfigFile()
        self._read = self.file
        """The file as last parsed, applied or not: the certificate files it names are watched too."""
        self._observe_new()
        tls = self.file.tls_server_config
        self.ssl_context: ssl.SSLContext | None = ssl_context(tls, path.parent) if tls and path else None
        """The context the listener was started with; each handshake switches to ``_current``."""
        self._current = self.ssl_context
        if self.ssl_context is not None:
            self.ssl_context.sni_callback = self._pick_context
        self._pool: ThreadPoolExecutor | None = None
        self.bcrypt_checks = 0
        """bcrypt runs so far: a known and an unknown user cost one each."""
        self._remembered: set[bytes] = set()
        self._wrong: OrderedDict[bytes, None] = OrderedDict()
        self._clean: deque[_Check] = deque()
        """Checks waiting, for peers without recent failures: run first."""
        self._suspect: deque[_Check] = deque()
        self._running = 0
        self._by_peer: Counter[str] = Counter()
        self._suspects: OrderedDict[str, float] = OrderedDict()
        """Peers whose credentials were wrong, and when last."""
        self.refusals: Counter[str] = Counter()
        self._unlogged = 0
        self._next_log = 0.0
        self._dummy = self._dummy_hash()

    @property
    def headers(self) -> dict[str, str]:
        return self.file.http_server_config.headers

    @property
    def auth_enabled(self) -> bool:
        return bool(self.file.basic_auth_users)

    def _dummy_hash(self) -> bytes:
        users = self.file.basic_auth_users
        if not users:
            return b""
        import bcrypt  # only with users to check: 0.4 MB resident (issue 32)

        cost = max((_cost(h) for h in users.values()), default=4)
        return bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=cost))

    def _watched(self) -> list[Path]:
        """The web config, and the certificate, key and client CA files named by the one in force and by
        the one read last (a refused file may name the files a rotation has not finished writing)."""
        if self.path is None:
            return []
        files = [self.path]
        for config in (self.file, self._read):
            tls = config.tls_server_config
            if tls is not None:
                names = (tls.cert_file, tls.key_file, *((tls.client_ca_file,) if tls.client_ca_file else ()))
                files += [self.path.parent / name for name in names]
        return list(dict.fromkeys(files))

    def _observe(self, files: list[Path]) -> None:
        """Remember what ``files`` are now (before they are read), as the state the next check compares."""
        self._stats = {f: _stat(f) for f in files}
        self._digests = {f: _digest(f) for f in files}

    def _observe_new(self) -> None:
        """Add the files a freshly parsed web config names, before they are loaded."""
        for f in self._watched():
            if f not in self._stats:
                self._stats[f], self._digests[f] = _stat(f), _digest(f)

    def _changed(self, contents: bool) -> list[Path]:
        files = self._watched()
        changed = [f for f in files if _stat(f) != self._stats.get(f, MISSING)]
        if not changed and contents:
            changed = [f for f in files if _digest(f) != self._digests.get(f, MISSING)]
        return changed

    def _pick_context(self, ssl_object: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext) -> None:
        """At each handshake: the certificate loaded last, without touching the listener's own context."""
        current = self._current
        if current is not None and current is not ssl_object.context:
            ssl_object.context = current
        return None

    def refresh(self, force: bool = False, contents: bool = False) -> None:
        """Re-read the file if it, or a certificate, key or CA file it names, changed (``contents``: compare
        what the files hold too, not only their stat; the periodic check does). A reload is applied whole
        or not at all: a file that is empty, does not parse, removes every user, or changes what cannot be
        applied live, or a certificate and key that do not load together (a rotation half written), keeps
        the previous one in force, with one line saying why. A new certificate is loaded into a fresh
        context, used by the next handshakes once it loads; until then the previous one serves."""
        if self.path is None:
            return
        touched = self._changed(contents)
        if not touched and not force:
            return
        self._observe(self._watched())  # before reading: a write from now on is seen by the next check
        files = [str(f) for f in touched]
        try:
            if self.path.stat().st_size == 0:
                raise ConfigError(f"{self.path} is empty (a write in progress?)")
            new = parse_web_config(self.path)
            self._read = new
            self._observe_new()
            if self.file.basic_auth_users and not new.basic_auth_users:
                raise ConfigError("it removes every basic-auth user, which would open /metrics to anyone")
            if (new.tls_server_config is None) != (self.ssl_context is None):
                raise ConfigError("turning TLS on or off needs a restart")
            fresh = None
            if new.tls_server_config is not None:
                old = self.file.tls_server_config
                live = (
                    "client_auth_type",
                    "client_ca_file",
                    "min_version",
                    "max_version",
                    "cipher_suites",
                    "prefer_server_cipher_suites",
                )
                changed = [k for k in live if getattr(old, k) != getattr(new.tls_server_config, k)]
                if changed:
                    raise ConfigError(f"changing {', '.join(changed)} needs a restart")
                fresh = ssl_context(new.tls_server_config, self.path.parent)
        except (ConfigError, OSError, ssl.SSLError) as exc:
            self.log.error("web config not reloaded; the previous one stays in force", error=str(exc), changed=files)
            return
        if fresh is not None:
            self._current = fresh
        self.file = new  # remembered passwords stay: each is keyed by its user's hash, which a change replaces
        self._dummy = self._dummy_hash()
        self.log.info("web config reloaded", changed=files)

    async def authorized(self, header: str | None, peer: str = "") -> bool:
        """Whether the ``Authorization`` header names a user with the right password; ``peer`` (see
        ``listener.peer_key``) is who sent it, for the share of checks it may hold."""
        users = self.file.basic_auth_users
        if not users:
            return True
        credentials = _credentials(header)
        if credentials is None:
            return self._refuse("missing", peer)
        name, password = credentials
        hashed = users.get(name)
        target = hashed.encode() if hashed is not None else self._dummy
        token = hashlib.sha256(target + b"\0" + password.encode()).digest()
        if hashed is not None and any(hmac.compare_digest(token, seen) for seen in self._remembered):
            return True
        if token in self._wrong:  # the same wrong password again: no bcrypt for it
            self._wrong.move_to_end(token)
            self._suspected(peer)
            return self._refuse("wrong", peer)
        check = self._enqueue(peer, password.encode(), target)
        if check is None:
            return self._refuse("busy", peer)
        ok = await check.result
        if ok is None:
            return self._refuse("busy", peer)
        if ok and hashed is not None:
            if len(self._remembered) >= MAX_REMEMBERED:
                self._remembered.clear()
            self._remembered.add(token)
            return True
        self._wrong[token] = None
        if len(self._wrong) > MAX_WRONG_REMEMBERED:
            self._wrong.popitem(last=False)
        self._suspected(peer)
        return self._refuse("wrong", peer)

    def _suspect_now(self, peer: str) -> bool:
        failed = self._suspects.get(peer)
        return failed is not None and self.clock() - failed < SUSPECT_FOR

    def _suspected(self, peer: str) -> None:
        self._suspects.pop(peer, None)
        self._suspects[peer] = self.clock()
        if len(self._suspects) > MAX_SUSPECTS:
            self._suspects.popitem(last=False)

    def _enqueue(self, peer: str, password: bytes, target: bytes) -> _Check | None:
        """A place in the queue of checks, or None when the peer's share, or every place, is taken."""
        if self._by_peer[peer] >= PER_PEER_PENDING:
            return None
        suspect = self._suspect_now(peer) or self._by_peer[peer] > 0  # a peer's second check waits its turn too
        if self._running + len(self._clean) + len(self._suspect) >= MAX_PENDING:
            if suspect or not self._suspect:
                return None
            bumped = self._suspect.pop()  # the newest waiting check of a peer with failures gives way
            self._left(bumped)
            if not bumped.result.done():
                bumped.result.set_result(None)
        check = _Check(peer, password, target)
        (self._suspect if suspect else self._clean).append(check)
        self._by_peer[peer] += 1
        self._dispatch()
        return check

    def _left(self, check: _Check) -> None:
        self._by_peer[check.peer] -= 1
        if self._by_peer[check.peer] <= 0:
            del self._by_peer[check.peer]

    def _dispatch(self) -> None:
        """Start waiting checks while a thread is free: peers without failures first."""
        while self._running < BCRYPT_THREADS and (self._clean or self._suspect):
            check = (self._clean or self._suspect).popleft()
            if check.result.done():  # its request is gone
                self._left(check)
                continue
            if self._pool is None:
                self._pool = ThreadPoolExecutor(BCRYPT_THREADS, thread_name_prefix="bcrypt")
            self._running += 1
            self.bcrypt_checks += 1
            running = asyncio.get_running_loop().run_in_executor(self._pool, _check, check.password, check.target)
            running.add_done_callback(functools.partial(self._finished, check))

    def _finished(self, check: _Check, done: asyncio.Future[bool]) -> None:
        self._running -= 1
        self._left(check)
        if not check.result.done():
            check.result.set_result(False if done.cancelled() or done.exception() else done.result())
        self._dispatch()

    def _refuse(self, reason: str, peer: str) -> bool:
        """Count a refusal (and log one line a minute at most, saying how many went unlogged)."""
        self.refusals[reason] += 1
        if self.on_refused is not None:
            self.on_refused(reason)
        now = self.clock()
        if now < self._next_log:
            self._unlogged += 1
            return False
        self._next_log = now + LOG_EVERY
        self.log.warning("basic auth refused", reason=reason, peer=peer[:64], refused_unlogged=self._unlogged)
        self._unlogged = 0
        return False

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


Stat = tuple[int, int, int, int, int]
MISSING = object()
"""Compares unequal to anything a file can be: a file not seen before counts as changed."""
DIGEST_MAX_BYTES = 1 << 20
"""What is hashed of a watched file (a certificate chain is a few KiB); its size is in its stat anyway."""


def _stat(path: Path) -> Stat | None:
    """What a rewrite, an atomic rename or a Kubernetes volume's symlink swap changes; None when absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _digest(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read(DIGEST_MAX_BYTES)).digest()
    except OSError:
        return None


BCRYPT_MAX_BYTES = 72
"""bcrypt reads only this much of a password; Go's exporter-toolkit compares the first 72 bytes, and so do we
(bcrypt 5 raises on a longer one instead of cutting it)."""


def _check(password: bytes, hashed: bytes) -> bool:
    import bcrypt  # imported already by ``_dummy_hash`` when there are users

    try:
        return bcrypt.checkpw(password[:BCRYPT_MAX_BYTES], hashed)
    except ValueError:
        return False
