"""The live web config: TLS context, extra headers, and basic auth that cannot stall the server.

bcrypt runs in a small thread pool, never on the event loop, and at most
``MAX_PENDING`` checks wait at once: past that a request is refused at once
(401) instead of queueing. An unknown user is checked against a dummy hash of
the same cost, so a guess costs the same whoever it names. A password that
was verified once is remembered (as a keyed digest), so a legitimate scraper
pays bcrypt once, not every scrape.

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
import hashlib
import hmac
import os
import ssl
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bcrypt
import structlog

from collector.errors import ConfigError
from collector.webconfig import WebConfigFile, parse_web_config, ssl_context

MAX_PENDING = 16
BCRYPT_THREADS = 2
MAX_REMEMBERED = 64


def _cost(hashed: str) -> int:
    return int(hashed.split("$")[2])


class WebConfig:
    def __init__(self, path: Path | None) -> None:
        self.path = path
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
        self._pending = 0
        self.bcrypt_checks = 0
        """bcrypt runs so far: a known and an unknown user cost one each."""
        self._remembered: set[bytes] = set()
        self._dummy = self._dummy_hash()

    @property
    def headers(self) -> dict[str, str]:
        return self.file.http_server_config.headers

    @property
    def auth_enabled(self) -> bool:
        return bool(self.file.basic_auth_users)

    def _dummy_hash(self) -> bytes:
        users = self.file.basic_auth_users
        cost = max((_cost(h) for h in users.values()), default=4)
        return bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=cost)) if users else b""

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
                live = ("client_auth_type", "client_ca_file", "min_version", "max_version", "cipher_suites",
                        "prefer_server_cipher_suites")
                changed = [k for k in live if getattr(old, k) != getattr(new.tls_server_config, k)]
                if changed:
                    raise ConfigError(f"changing {', '.join(changed)} needs a restart")
                fresh = ssl_context(new.tls_server_config, self.path.parent)
        except (ConfigError, OSError, ssl.SSLError) as exc:
            self.log.error("web config not reloaded; the previous one stays in force", error=str(exc),
                           changed=files)
            return
        if fresh is not None:
            self._current = fresh
        self.file = new
        self._remembered.clear()
        self._dummy = self._dummy_hash()
        self.log.info("web config reloaded", changed=files)

    async def authorized(self, header: str | None) -> bool:
        users = self.file.basic_auth_users
        if not users:
            return True
        if not header or header[:6].lower() != "basic ":
            return False
        try:
            name, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return False
        if not sep:
            return False
        hashed = users.get(name)
        target = hashed.encode() if hashed is not None else self._dummy
        token = hashlib.sha256(target + b"\0" + password.encode()).digest()
        if hashed is not None and any(hmac.compare_digest(token, seen) for seen in self._remembered):
            return True
        if self._pending >= MAX_PENDING:
            return False
        self._pending += 1
        self.bcrypt_checks += 1
        try:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(BCRYPT_THREADS, thread_name_prefix="bcrypt")
            ok = await asyncio.get_running_loop().run_in_executor(self._pool, _check, password.encode(), target)
        finally:
            self._pending -= 1
        if ok and hashed is not None:
            if len(self._remembered) >= MAX_REMEMBERED:
                self._remembered.clear()
            self._remembered.add(token)
            return True
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
    try:
        return bcrypt.checkpw(password[:BCRYPT_MAX_BYTES], hashed)
    except ValueError:
        return False
