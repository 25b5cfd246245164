"""TLS, client certificates, headers and basic auth for the endpoints, from an exporter-toolkit web config.

    tls_server_config:
      cert_file, key_file            the server's certificate and key
      client_auth_type               NoClientCert (default), VerifyClientCertIfGiven, RequireAndVerifyClientCert
      client_ca_file                 CAs for client certificates (required by the Verify types)
      min_version, max_version       TLS10 .. TLS13 (default TLS12 .. TLS13)
      cipher_suites                  Go (IANA) names, for TLS 1.2 and older
      prefer_server_cipher_suites    true/false
    http_server_config:
      headers                        the security headers the toolkit allows
    basic_auth_users:                name: bcrypt hash

Every key is checked; an unknown one, or one this server cannot honour
(``RequestClientCert``, ``RequireAnyClientCert``, ``curve_preferences``,
``client_allowed_sans``), is a ConfigError: nothing fails open. ``http2: true`` (the toolkit's default)
is accepted with one warning line and served as HTTP/1.1.
Paths are relative to the file. Basic auth is checked in ``auth.py``.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from collector.errors import ConfigError

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
UNVERIFIED_AUTH = ("RequestClientCert", "RequireAnyClientCert")
"""Go can ask for a certificate without verifying it; OpenSSL through Python cannot, so these are refused."""

# Go's names (IANA) of the TLS <= 1.2 suites it supports, and OpenSSL's names for them.
CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
# The headers exporter-toolkit lets a web config set, with the values it accepts (None: any value).
ALLOWED_HEADERS: dict[str, tuple[str, ...] | None] = {
    "strict-transport-security": None,
    "x-content-type-options": ("nosniff",),
    "x-frame-options": ("deny", "sameorigin"),
    "x-xss-protection": None,
    "content-security-policy": None,
}

Version = Literal["TLS10", "TLS11", "TLS12", "TLS13"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsServerConfig(_Strict):
    cert_file: str
    key_file: str
    client_auth_type: str = "NoClientCert"
    client_ca_file: str | None = None
    min_version: Version = "TLS12"
    max_version: Version = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True

    @field_validator("client_auth_type")
    @classmethod
    def _auth_type(cls, value: str) -> str:
        if value in UNVERIFIED_AUTH:
            raise ValueError(
                f"{value} (a certificate that is not verified) is not supported; use "
                "VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file"
            )
        if value not in CLIENT_AUTH:
            raise ValueError(f"must be one of {', '.join(CLIENT_AUTH)}")
        return value

    @field_validator("cipher_suites")
    @classmethod
    def _suites(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in CIPHER_SUITES]
        if unknown:
            raise ValueError(f"unknown or unsupported cipher suite {unknown[0]!r}")
        return value


class HttpServerConfig(_Strict):
    http2: bool = False
    headers: dict[str, str] = {}

    @field_validator("http2")
    @classmethod
    def _http2(cls, value: bool) -> bool:
        if value:  # the exporter-toolkit's default: a web config copied from a Go exporter must start
            structlog.get_logger("collector.web").warning(
                "web config asks for http2; this server speaks HTTP/1.1 only, and serves it that way"
            )
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            allowed = ALLOWED_HEADERS.get(name.lower(), ())
            if allowed == ():
                raise ValueError(f"header {name!r} cannot be set (allowed: {', '.join(ALLOWED_HEADERS)})")
            if not text.isprintable() or not text.isascii():
                raise ValueError(f"header {name!r} has a value that cannot go in an HTTP header")
            if allowed is not None and text.lower() not in allowed:
                raise ValueError(f"header {name!r} must be one of {', '.join(allowed)}")
        return value


class WebConfigFile(_Strict):
    tls_server_config: TlsServerConfig | None = None
    http_server_config: HttpServerConfig = HttpServerConfig()
    basic_auth_users: dict[str, str] = {}

    @field_validator("basic_auth_users")
    @classmethod
    def _hashes(cls, value: dict[str, str]) -> dict[str, str]:
        for name, hashed in value.items():
            if not hashed.startswith(("$2a$", "$2b$", "$2y$")) or len(hashed) != 60:
                raise ValueError(f"the entry for {name!r} must be a bcrypt hash")
        return value


def _describe(error: Mapping[str, Any]) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "file"
    if error["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


MAX_WEB_CONFIG_BYTES = 1 << 20


def parse_web_config(path: Path) -> WebConfigFile:
    """The file, validated. YAML aliases are accepted, as Go's exporter-toolkit accepts them: PyYAML builds
    an alias as a second reference to one object, and every value of this schema is flat (a string, a list
    or map of strings), which pydantic refuses at the first value of another shape without walking into it,
    so an alias bomb costs what its bytes do. Nothing here walks the tree; nesting too deep to read, or a
    file over ``MAX_WEB_CONFIG_BYTES``, is one ConfigError line."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_WEB_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"web_config: cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_WEB_CONFIG_BYTES:
        raise ConfigError(f"web_config: {path} is over {MAX_WEB_CONFIG_BYTES} bytes; a web config is a few hundred")
    import yaml  # only with a web config: 1 MB resident (issue 32)

    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        raise ConfigError(f"web_config: {path} is not valid YAML") from None
    except (RecursionError, MemoryError, ValueError):
        raise ConfigError(f"web_config: {path} is too deeply nested or holds a value too large to read") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"web_config: {path} must hold a mapping")
    try:
        return WebConfigFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"web_config: {path}: {_describe(exc.errors()[0])}") from None


def ssl_context(config: TlsServerConfig, base: Path) -> ssl.SSLContext:
    """A server context that does what the file says, or a ConfigError naming what cannot be done."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.minimum_version = TLS_VERSIONS[config.min_version]
        context.maximum_version = TLS_VERSIONS[config.max_version]
    except (ValueError, ssl.SSLError) as exc:
        raise ConfigError(f"web_config: tls_server_config: TLS versions not available here: {exc}") from None
    if context.minimum_version > context.maximum_version:
        raise ConfigError("web_config: tls_server_config.min_version is above max_version")
    try:
        context.load_cert_chain(str(base / config.cert_file), str(base / config.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"web_config: cannot load TLS certificate or key: {exc}") from None
    context.verify_mode = CLIENT_AUTH[config.client_auth_type]
    if context.verify_mode != ssl.CERT_NONE:
        if not config.client_ca_file:
            raise ConfigError(f"web_config: tls_server_config.client_auth_type {config.client_auth_type} needs client_ca_file")
        try:
            context.load_verify_locations(cafile=str(base / config.client_ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"web_config: cannot load client_ca_file: {exc}") from None
    elif config.client_ca_file:
        raise ConfigError(
            "web_config: client_ca_file is set but client_auth_type is NoClientCert; "
            "set VerifyClientCertIfGiven or RequireAndVerifyClientCert"
        )
    if config.cipher_suites:
        try:
            context.set_ciphers(":".join(CIPHER_SUITES[name] for name in config.cipher_suites))
        except ssl.SSLError:
            raise ConfigError("web_config: none of tls_server_config.cipher_suites is available here") from None
    if config.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    return context
