"""Settings in, each component's configuration out: ``wire`` is the one place a ``Settings`` is read.

Every component is built from its part of the ``Wiring``, passed whole (``arguments``), and none of
them has a default of its own for what a setting decides: a setting's default is its declaration's
(``collector.settings``), and nowhere else. ``tests/test_wiring.py`` builds the wiring from settings
where every field differs from its default and fails, naming the setting, when one changes nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from collector.aggregates import Buckets
from collector.derive import OTHER_ERROR
from collector.errors import ConfigError
from collector.families import SemConv
from collector.projects import ProjectsConfig
from collector.selection import PollConfig
from collector.settings import Settings


@dataclass(frozen=True)
class KeySource:
    """Where the API key comes from: a key file (it wins), else ``LLAMA_CLOUD_API_KEY``."""

    api_key: SecretStr | None
    api_key_file: Path | None

    def read(self) -> str:
        """The API key, or a ConfigError that says where to put one. The key is never in a message."""
        if self.api_key_file is not None:
            try:
                text = self.api_key_file.read_bytes().decode("utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"api_key_file (--api-key-file, COLLECTOR_API_KEY_FILE): cannot read {self.api_key_file}: {exc.strerror}"
                ) from None
            except UnicodeDecodeError:
                text = "\x80"  # not UTF-8: refused below as not header-safe
            if not text:
                raise ConfigError(f"api_key_file (--api-key-file, COLLECTOR_API_KEY_FILE): {self.api_key_file} is empty")
            return _header_safe(text, f"the key in {self.api_key_file}")
        if self.api_key is not None and self.api_key.get_secret_value().strip():
            return _header_safe(self.api_key.get_secret_value().strip(), "LLAMA_CLOUD_API_KEY")
        raise ConfigError("missing API key: set LLAMA_CLOUD_API_KEY or COLLECTOR_API_KEY_FILE (--api-key-file)")


def _header_safe(key: str, where: str) -> str:
    """The key goes into an Authorization header: printable ASCII without spaces, or a ConfigError."""
    if not all(33 <= ord(c) <= 126 for c in key):
        raise ConfigError(
            f"api key: {where} holds characters that cannot go in an HTTP header "
            "(spaces, control characters or non-ASCII); the key is not shown"
        )
    return key


@dataclass(frozen=True)
class ClientConfig:
    """``LlamaCloudClient``'s keyword arguments that settings decide (the key, transport and observer aside)."""

    base_url: str
    organization_id: str | None
    connect_timeout: float
    read_timeout: float
    max_connections: int
    page_size: int
    max_response_bytes: int
    max_events: int
    max_requests_per_second: float | None
    """This shard's share of ``--max-requests-per-second``."""


@dataclass(frozen=True)
class StoreConfig:
    """``SqliteStore``'s arguments: the state file and what the configuration makes of a run."""

    path: Path
    buckets: Buckets
    rules: list[tuple[str, str]]
    label_limit: int


@dataclass(frozen=True)
class ExpositionConfig:
    """``SnapshotCollector``'s keyword arguments."""

    interval: float
    expose_titles: bool
    shard: int
    total_shards: int
    error_types: tuple[str, ...]
    """Every ``error_type`` the rules give, and ``_OTHER``: shown at 0 from the first sync."""
    semconv: SemConv


@dataclass(frozen=True)
class OtlpConfig:
    """Where the chat families are pushed over OTLP/HTTP (``--otlp-endpoint``); None: not pushed."""

    endpoint: str | None


@dataclass(frozen=True)
class EndpointsConfig:
    """Where the endpoints listen, and their TLS and basic auth (the exporter-toolkit web config file)."""

    listen: str
    web_config: Path | None


@dataclass(frozen=True)
class LogConfig:
    """``logs.configure``'s arguments (the secrets to redact aside)."""

    level: str
    fmt: str | None


@dataclass(frozen=True)
class Wiring:
    """Each component's configuration, all of it from one ``Settings``."""

    key: KeySource
    client: ClientConfig
    projects: ProjectsConfig
    """Which projects: each with its own poller, all on one client (``collector.projects``)."""
    poll: PollConfig
    rules: tuple[tuple[str, str], ...]
    """The error classifier's ordered (type, pattern) rules."""
    store: StoreConfig | None
    """None: memory only."""
    exposition: ExpositionConfig
    otlp: OtlpConfig
    endpoints: EndpointsConfig
    logs: LogConfig


def wire(settings: Settings) -> Wiring:
    """The one function that reads ``settings``: every setting reaches a component through here."""
    buckets = settings.buckets.as_buckets()
    rules = tuple((r.type, r.pattern) for r in settings.error_rules)
    return Wiring(
        key=KeySource(api_key=settings.api_key, api_key_file=settings.api_key_file),
        client=ClientConfig(
            base_url=settings.base_url,
            organization_id=settings.organization_id,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            max_connections=settings.max_concurrency + 1,  # + the listing
            page_size=settings.page_size,
            max_response_bytes=settings.max_response_bytes,
            max_events=settings.max_events_per_session,
            max_requests_per_second=None
            if settings.max_requests_per_second is None
            else settings.max_requests_per_second / settings.total_shards,
        ),
        projects=ProjectsConfig(ids=settings.project_id, all=settings.all_projects),
        poll=PollConfig(
            interval=settings.interval,
            discover=settings.discovery,
            session_ids=settings.session_ids,
            index_ids=settings.index_ids,
            shard=settings.shard,
            total_shards=settings.total_shards,
            max_concurrency=settings.max_concurrency,
            series_limit=settings.session_series_limit,
            buckets=buckets,
            label_limit=settings.label_value_limit,
            log_runs=settings.log_runs,
            page_size=settings.page_size,
        ),
        rules=rules,
        store=None
        if settings.state_path is None
        else StoreConfig(path=settings.state_path, buckets=buckets, rules=list(rules), label_limit=settings.label_value_limit),
        exposition=ExpositionConfig(
            interval=settings.interval,
            expose_titles=settings.expose_titles,
            shard=settings.shard,
            total_shards=settings.total_shards,
            error_types=tuple(dict.fromkeys([*(t for t, _ in rules), OTHER_ERROR])),
            semconv=settings.semconv,
        ),
        otlp=OtlpConfig(endpoint=settings.otlp_endpoint),
        endpoints=EndpointsConfig(listen=settings.listen, web_config=settings.web_config),
        logs=LogConfig(level=settings.log_level, fmt=settings.log_format),
    )


def arguments(config: Any) -> dict[str, Any]:
    """A configuration's fields as keyword arguments, one level deep: a component takes all of them (it has
    no default for any), so a field added here and not taken, or a parameter not given, fails at once."""
    return {f.name: getattr(config, f.name) for f in fields(config)}
