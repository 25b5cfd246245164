"""TLS and basic auth for the endpoints, from an exporter-toolkit web config file.

    tls_server_config: {cert_file: ..., key_file: ...}
    basic_auth_users: {name: <bcrypt hash>}

The file is re-read when it changes. A bad file at startup is a ConfigError; a
bad file later is logged and the last good one stays in force.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import structlog
import yaml

from collector.errors import ConfigError

KNOWN_KEYS = {"tls_server_config", "basic_auth_users", "http_server_config"}


@dataclass(frozen=True)
class WebSettings:
    cert_file: Path | None
    key_file: Path | None
    users: dict[str, bytes]


def parse_web_config(path: Path) -> WebSettings:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"web_config: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError:
        raise ConfigError(f"web_config: {path} is not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"web_config: {path} must hold a mapping")
    unknown = sorted(set(data) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"web_config: {path}: unknown key {unknown[0]!r}")
    tls = data.get("tls_server_config") or {}
    cert, key = tls.get("cert_file"), tls.get("key_file")
    if bool(cert) != bool(key):
        raise ConfigError("web_config: tls_server_config needs both cert_file and key_file")
    users = {}
    for name, hashed in (data.get("basic_auth_users") or {}).items():
        if not isinstance(hashed, str) or not hashed.startswith("$2"):
            raise ConfigError(f"web_config: basic_auth_users.{name} must be a bcrypt hash")
        users[str(name)] = hashed.encode()
    base = path.parent
    return WebSettings(base / cert if cert else None, base / key if key else None, users)


class WebConfig:
    """The live web settings: an SSL context to serve with, and a basic-auth check."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.log = structlog.get_logger("collector.web")
        self._mtime = self._stat()
        self.settings = parse_web_config(path) if path else WebSettings(None, None, {})
        self.ssl_context = self._new_context() if self.settings.cert_file else None
        self._verified: set[bytes] = set()

    def _stat(self) -> float | None:
        try:
            return os.stat(self.path).st_mtime if self.path else None
        except OSError:
            return None

    def _new_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load_chain(context)
        return context

    def _load_chain(self, context: ssl.SSLContext) -> None:
        try:
            context.load_cert_chain(str(self.settings.cert_file), str(self.settings.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"web_config: cannot load TLS certificate or key: {exc}") from None

    def refresh(self) -> None:
        """Re-read the file if it changed; keep the old settings if the new ones are bad."""
        mtime = self._stat()
        if self.path is None or mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            settings = parse_web_config(self.path)
            if self.ssl_context is not None and settings.cert_file:
                old, self.settings = self.settings, settings
                try:
                    self._load_chain(self.ssl_context)
                except ConfigError:
                    self.settings = old
                    raise
        except ConfigError as exc:
            self.log.error("web config not reloaded", error=str(exc))
            return
        self.settings = settings
        self._verified.clear()
        self.log.info("web config reloaded")

    def authorized(self, header: str | None) -> bool:
        users = self.settings.users
        if not users:
            return True
        if not header or not header.lower().startswith("basic "):
            return False
        try:
            name, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = users.get(name)
        if hashed is None:
            return False
        token = hashlib.sha256(hashed + b"\0" + password.encode()).digest()
        if any(hmac.compare_digest(token, seen) for seen in self._verified):
            return True
        if bcrypt.checkpw(password.encode(), hashed):
            self._verified.add(token)
            return True
        return False
