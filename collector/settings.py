"""Settings, built once at startup: flags > env > YAML file (``--config``) > defaults.

Every bad value becomes one ``ConfigError`` line that names the setting, the
flag and the env var. The API key is read only from ``LLAMA_CLOUD_API_KEY`` or
a key file, and never appears in a message.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, create_model, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from collector.aggregates import Buckets
from collector.cadence import BUDGET_RATIO
from collector.derive import DEFAULT_ERROR_RULES
from collector.errors import ConfigError
from collector.families import DEFAULT_BUCKETS, HISTOGRAMS, SemConv
from collector.llamacloud.bounds import DEFAULT_MAX_RESPONSE_BYTES, session_id_problem
from collector.paths import state_path_problem

DEFAULT_BASE_URL = "https://api.cloud.llamaindex.ai"

CONFIG_ENV = "COLLECTOR_CONFIG"

MIN_REQUESTS_PER_CYCLE = 2
"""What a shard's share of ``--max-requests-per-second`` must allow in one cycle: a listing page and a fetch."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ErrorRule(_Strict):
    type: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        return value


def _increasing(values: tuple[float, ...]) -> tuple[float, ...]:
    if not all(math.isfinite(v) for v in values):
        raise ValueError("bucket bounds must be finite numbers (+Inf is always added)")
    if not values or any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError("buckets must be a non-empty, strictly increasing list")
    return values


class _BucketBase(_Strict):
    def as_buckets(self) -> Buckets:
        return Buckets({f.bucket: getattr(self, f.bucket) for f in HISTOGRAMS})


if typing.TYPE_CHECKING:

    class BucketSettings(_BucketBase):
        """One field per histogram family (its ``bucket``), each a tuple of bounds."""

        def __getattr__(self, name: str) -> tuple[float, ...]: ...

else:
    BucketSettings = create_model(
        "BucketSettings",
        __base__=_BucketBase,
        __validators__={"increasing": field_validator(*DEFAULT_BUCKETS)(_increasing)},
        **{name: (tuple[float, ...], default) for name, default in DEFAULT_BUCKETS.items()},
    )
    """Generated from ``FAMILIES``: a histogram family's entry is its bucket setting."""


@dataclass(frozen=True)
class Option:
    """How a setting is given: its flag (None: only in the environment or the file), env var and help."""

    name: str
    env: str
    flag: str | None
    help: str
    aliases: tuple[str, ...] = ()
    shown: str | None = None
    """The README's default, where the value itself is not what a reader needs."""


def setting(
    default: Any,
    *,
    env: str,
    help: str,
    flag: str | None = "",
    aliases: tuple[str, ...] = (),
    shown: str | None = None,
    schema: dict[str, Any] | None = None,
    **limits: Any,
) -> Any:
    """A ``Settings`` field with its flag, env var and help: the one declaration that argparse, ``ENV_VARS``,
    the error messages, the README's table and the chart's ``config`` values, schema and table are generated
    from. The flag defaults to the field's name; ``schema`` adds to the JSON schema what a validator checks
    (the chart's ``values.schema.json`` then refuses it before the collector does)."""
    option: dict[str, Any] = {"env": env, "flag": flag, "help": help, "aliases": list(aliases), "shown": shown}
    extra = {**(schema or {}), "option": option}
    return Field(default=default, description=help, json_schema_extra=typing.cast(Any, extra), **limits)


class Settings(BaseSettings):
    """Every setting of the collector. Sources are merged by ``load_settings``."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    base_url: str = setting(
        DEFAULT_BASE_URL,
        env="LLAMA_CLOUD_BASE_URL",
        schema={"pattern": "^https?://"},
        help="API base URL (EU: `https://api.cloud.eu.llamaindex.ai`)",
    )
    api_key: SecretStr | None = setting(
        None,
        env="LLAMA_CLOUD_API_KEY",
        flag=None,
        shown="required for `run`, `check`",
        repr=False,
        help="the API key; never a flag, never logged",
    )
    api_key_file: Path | None = setting(
        None,
        env="COLLECTOR_API_KEY_FILE",
        help="read the key from a file; when set it wins over `LLAMA_CLOUD_API_KEY`, and one that cannot be read is an error",
    )
    project_id: tuple[str, ...] = setting(
        (),
        env="LLAMA_CLOUD_PROJECT_ID",
        schema={"type": ["array", "string"]},  # one ID, as before several, or a list
        shown="none (the key's default project)",
        help="the project to watch, passed as `project_id`; repeat it (comma-separated in the environment) to "
        "watch several; with `--all-projects`, the project an earlier release's state file watched",
    )
    all_projects: bool = setting(
        False,
        env="COLLECTOR_ALL_PROJECTS",
        help="watch every project of `--organization-id` (the projects listing, read each interval: added and "
        "removed projects are picked up)",
    )
    organization_id: str | None = setting(None, env="LLAMA_CLOUD_ORGANIZATION_ID", help="passed as `organization_id`")
    session_ids: tuple[str, ...] = setting(
        (), env="COLLECTOR_SESSION_IDS", flag="--session-id", help="watch these sessions (via `summary`)"
    )
    discover: bool | None = setting(
        None, env="COLLECTOR_DISCOVER", shown="on when no session IDs are given", help="page through `list` to find sessions"
    )
    index_ids: tuple[str, ...] = setting(
        (), env="COLLECTOR_INDEX_IDS", flag="--index-id", help="keep only discovered sessions bound to one of these indexes"
    )
    interval: float = setting(
        60.0, env="COLLECTOR_INTERVAL", ge=1, le=86400, allow_inf_nan=False, help="seconds between polls (1 to 86400)"
    )
    listen: str = setting("0.0.0.0:9742", env="COLLECTOR_LISTEN", help="`host:port` of the endpoints")
    state_path: Path | None = setting(
        None,
        env="COLLECTOR_STATE_PATH",
        shown="none (memory only)",
        help="state file that keeps counters across restarts; a regular file or absent (a directory, device "
        "or symbolic link is refused)",
    )
    max_concurrency: int = setting(8, env="COLLECTOR_MAX_CONCURRENCY", ge=1, le=256, help="session fetches in flight (1 to 256)")
    session_series_limit: int = setting(
        500,
        env="COLLECTOR_SESSION_SERIES_LIMIT",
        ge=0,
        help="sessions with per-session series (most recently updated first), in each project",
    )
    shard: int = setting(0, env="COLLECTOR_SHARD", ge=0, help="watch only the sessions whose ID hashes to this shard")
    total_shards: int = setting(1, env="COLLECTOR_TOTAL_SHARDS", ge=1, help="how many shards share the sessions")
    log_format: Literal["json", "console"] | None = setting(
        None, env="COLLECTOR_LOG_FORMAT", shown="json when not a TTY", help="`json` or `console`"
    )
    log_level: Literal["debug", "info", "warning", "error"] = setting(
        "info", env="COLLECTOR_LOG_LEVEL", help="`debug`, `info`, `warning` (or `warn`), `error`"
    )
    expose_titles: bool = setting(
        False, env="COLLECTOR_EXPOSE_TITLES", help="add `title` to `session_info` (titles may hold personal data)"
    )
    web_config: Path | None = setting(
        None,
        env="COLLECTOR_WEB_CONFIG",
        aliases=("--web.config.file",),
        help="TLS, client certificates, headers and basic auth, [exporter-toolkit format]"
        "(https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md); re-read on "
        "change; `--web.config.file` as Prometheus' exporters spell it",
    )
    connect_timeout: float = setting(
        5.0,
        env="COLLECTOR_CONNECT_TIMEOUT",
        gt=0,
        le=600,
        allow_inf_nan=False,
        help="API connect timeout, seconds; one API exchange, from request to last body byte, may take it plus "
        "the read timeout (and never past the cycle's deadline)",
    )
    read_timeout: float = setting(
        30.0, env="COLLECTOR_READ_TIMEOUT", gt=0, le=3600, allow_inf_nan=False, help="API read timeout, seconds"
    )
    label_value_limit: int = setting(
        50,
        env="COLLECTOR_LABEL_VALUE_LIMIT",
        ge=1,
        help="distinct `tool` and `index_id` values in each project; the rest become `_other`",
    )
    max_response_bytes: int = setting(
        DEFAULT_MAX_RESPONSE_BYTES,
        env="COLLECTOR_MAX_RESPONSE_BYTES",
        ge=65536,
        le=1 << 34,
        shown="`33554432` (32 MiB)",
        help="cap on one API response body, on the wire and decompressed; a larger one is an invalid payload",
    )
    max_events_per_session: int = setting(
        1_000_000,
        env="COLLECTOR_MAX_EVENTS_PER_SESSION",
        ge=1,
        le=1 << 31,
        shown="`1000000`",
        help="events in one session's history; a longer one fails on its own, like an over-size body",
    )
    log_runs: Literal["failed", "all", "none"] = setting(
        "failed", env="COLLECTOR_LOG_RUNS", help="one JSON log line per failed run (`failed`), per run (`all`), or none"
    )
    page_size: int = setting(
        100,
        env="COLLECTOR_PAGE_SIZE",
        ge=1,
        le=1000,
        help="sessions asked for per listing page (1 to 1000); the API may send fewer",
    )
    semconv: SemConv = setting(
        "llamacloud",
        env="COLLECTOR_SEMCONV",
        help="the names of the chat families: `llamacloud` (the contract), `gen_ai` (the OpenTelemetry GenAI "
        "semantic conventions as Prometheus translates them, our names for the rest) or `both`",
    )
    otlp_endpoint: str | None = setting(
        None,
        env="OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        shown="none (`OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/metrics` when that is set)",
        schema={"pattern": "^$|^https?://"},  # "": none, in the chart
        help="push the chat families over OTLP/HTTP to this URL after each poll, as cumulative sums and "
        "histograms under the `--semconv` names; `OTEL_EXPORTER_OTLP_HEADERS`, `_TIMEOUT` and `_COMPRESSION` "
        "(or their `_METRICS_` forms) apply; header values are never logged",
    )
    max_requests_per_second: float | None = setting(
        None,
        env="COLLECTOR_MAX_REQUESTS_PER_SECOND",
        gt=0,
        le=100000,
        allow_inf_nan=False,
        shown="none (unbounded)",
        help="API requests a second, every request counted (listing, summaries, histories, retries), shared "
        "by all shards: each takes its share (`/ --total-shards`); a 429's `Retry-After` pauses every "
        "request further",
    )
    error_rules: tuple[ErrorRule, ...] = Field(
        default=tuple(ErrorRule(type=t, pattern=p) for t, p in DEFAULT_ERROR_RULES),
        description="ordered `{type, pattern}` rules for `error_type`: the first whose pattern matches the error wins",
    )
    buckets: BucketSettings = Field(
        default=BucketSettings(),
        description="histogram bucket bounds: " + ", ".join(f"`{name}`" for name in DEFAULT_BUCKETS),
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # load_settings merges flags, env and file itself

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp(cls, value: str | None) -> str | None:
        return None if value is None else cls._url(value)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if any(c in value for c in "\r\n\t\x00") or not value.isprintable():
            raise ValueError("holds control characters (a CR or LF?); the value is not shown")
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        netloc = value.split("://", 1)[1].split("/", 1)[0]
        if "@" in netloc:
            raise ValueError(
                "holds credentials (user:password@); the key goes in LLAMA_CLOUD_API_KEY, and the value is not shown"
            )
        return value.rstrip("/")

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        value = value.lower()
        return "warning" if value == "warn" else value  # as Prometheus' own exporters spell it

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        split_listen(value)
        return value

    @model_validator(mode="after")
    def _shards(self) -> Settings:
        if self.shard >= self.total_shards:
            raise ValueError(
                f"shard (--shard, COLLECTOR_SHARD) must be less than total_shards "
                f"(--total-shards, COLLECTOR_TOTAL_SHARDS): {self.shard} >= {self.total_shards}"
            )
        return self

    @model_validator(mode="after")
    def _budget(self) -> Settings:
        """A request budget that leaves a shard's cycle under ``MIN_REQUESTS_PER_CYCLE`` requests is a cliff, not
        a slow collector: cycles with nothing answered look like outages. Refused, with the figures."""
        rate = self.max_requests_per_second
        if rate is not None and rate / self.total_shards * self.interval * BUDGET_RATIO < MIN_REQUESTS_PER_CYCLE:
            raise ValueError(
                f"max_requests_per_second (--max-requests-per-second, COLLECTOR_MAX_REQUESTS_PER_SECOND): {rate:g} "
                f"a second over {self.total_shards} shard(s) leaves a cycle of --interval {self.interval:g} fewer "
                f"than {MIN_REQUESTS_PER_CYCLE} requests; raise it to at least "
                f"{MIN_REQUESTS_PER_CYCLE * self.total_shards / (self.interval * BUDGET_RATIO):.3g} or the interval"
            )
        return self

    @field_validator("project_id", mode="before")
    @classmethod
    def _one_project(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value  # a settings file's `project_id: <id>`, as before

    @field_validator("project_id")
    @classmethod
    def _project_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for project in value:
            problem = session_id_problem(project)
            if problem or not project.isascii() or any(c in project for c in " ,"):
                raise ValueError(f"not a project ID: {project[:80]!r}")
        if len(set(value)) < len(value):
            raise ValueError("a project is named twice")
        return value

    @model_validator(mode="after")
    def _all_projects(self) -> Settings:
        if self.all_projects and len(self.project_id) > 1:
            raise ValueError(
                "all_projects (--all-projects, COLLECTOR_ALL_PROJECTS) watches every project: give at most one "
                "project_id with it (the project an earlier state file watched), not a list"
            )
        return self

    @field_validator("state_path")
    @classmethod
    def _state_path(cls, value: Path | None) -> Path | None:
        if value is not None:
            problem = state_path_problem(value)
            if problem:
                raise ValueError(problem)
        return value

    @property
    def discovery(self) -> bool:
        return self.discover if self.discover is not None else not self.session_ids


def _options() -> dict[str, Option]:
    out = {}
    for name, info in Settings.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and isinstance(extra.get("option"), dict):
            o = typing.cast(dict[str, Any], extra["option"])
            flag = f"--{name.replace('_', '-')}" if o["flag"] == "" else o["flag"]
            out[name] = Option(name, o["env"], flag, o["help"], tuple(o["aliases"]), o["shown"])
    return out


OPTIONS: dict[str, Option] = _options()
"""Every setting given by flag or env var, in declaration order."""
ENV_VARS: dict[str, str] = {name: o.env for name, o in OPTIONS.items()}
LIST_FIELDS = frozenset(
    name for name, info in Settings.model_fields.items() if name in OPTIONS and typing.get_origin(info.annotation) is tuple
)
"""Repeatable settings: a flag per value, comma-separated in the environment."""


def split_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be host:port with a port from 0 to 65535")
    return host.strip("[]") or "0.0.0.0", int(port)


MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_DEPTH = 32


def _depth(value: Any, limit: int = MAX_CONFIG_DEPTH) -> int:
    stack, deepest = [(value, 1)], 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            break
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _read_config(path: str) -> dict[str, Any]:
    import yaml  # only with a settings file: 1 MB resident (issue 32)

    from collector.yamlfile import AliasRefused, UniqueKeyLoader

    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config: {path} is over {MAX_CONFIG_BYTES} bytes; a settings file is a few hundred")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config: {path} is not UTF-8 (byte {exc.start}); save it as UTF-8") from None
    try:
        nesting = max((m.end() - m.start() for m in re.finditer(r"[\[{]+", text)), default=0)
        if nesting > MAX_CONFIG_DEPTH:
            raise ConfigError(f"config: {path} nests deeper than {MAX_CONFIG_DEPTH} levels")
        data = yaml.load(text, Loader=UniqueKeyLoader)
    except AliasRefused as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        raise ConfigError(
            f"config: {path}: YAML aliases are not accepted ({exc.problem} at line {line}); write the value out where it is used"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or ""
        detail = f": {problem}" if "duplicate key" in str(problem) else ""
        raise ConfigError(f"config: {path} is not valid YAML{where}{detail}") from None
    except (RecursionError, MemoryError):
        raise ConfigError(f"config: {path} is too deeply nested or too large to read") from None
    except ValueError:  # Python refuses to read an integer of thousands of digits
        raise ConfigError(f"config: {path} holds a value too large to read (a number of thousands of digits?)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping of settings")
    if _depth(data) > MAX_CONFIG_DEPTH:
        raise ConfigError(f"config: {path} nests deeper than {MAX_CONFIG_DEPTH} levels")
    odd = [k for k in data if not isinstance(k, str)]
    if odd:
        raise ConfigError(f"config: {path}: setting names must be strings, not {str(odd[0])[:40]!r}")
    if "api_key" in data:
        raise ConfigError(f"config: {path}: api_key is not accepted in a file; use LLAMA_CLOUD_API_KEY or api_key_file")
    unknown = sorted(set(data) - set(Settings.model_fields))
    if unknown:
        raise ConfigError(f"config: {path}: unknown setting {unknown[0][:60]!r}")
    return data


OTLP_BASE_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
"""The OpenTelemetry base endpoint: the metrics one is it with ``/v1/metrics``, as the SDK's exporter reads it."""


def otlp_secrets(environ: Mapping[str, str]) -> list[str]:
    """The header values of ``OTEL_EXPORTER_OTLP_(METRICS_)HEADERS`` (``key=value,...``): a backend's API key, for
    the log redactor."""
    values = []
    for name in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS"):
        for pair in (environ.get(name) or "").split(","):
            _, sep, value = pair.partition("=")
            if sep and value.strip():
                values.append(value.strip())
    return values


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    base = environ.get(OTLP_BASE_ENV)
    if base and not environ.get(ENV_VARS["otlp_endpoint"]):
        values["otlp_endpoint"] = base.rstrip("/") + "/v1/metrics"
    for name, var in ENV_VARS.items():
        raw = environ.get(var)
        if raw == "" and name == "shard":
            raise ConfigError(
                "shard (COLLECTOR_SHARD) is set but empty; on Kubernetes it comes from the pod's "
                "apps.kubernetes.io/pod-index label, which needs Kubernetes 1.28 or newer"
            )
        if raw is None or (raw == "" and name != "api_key"):
            continue
        values[name] = [p.strip() for p in raw.split(",") if p.strip()] if name in LIST_FIELDS else raw
    return values


def _describe(error: Mapping[str, Any]) -> str:
    loc = [str(p) for p in error["loc"]]
    name = loc[0] if loc else "settings"
    option = OPTIONS.get(name)
    where = [w for w in (option.flag, option.env) if w] if option else []
    if not loc:
        return str(error["msg"]).removeprefix("Value error, ")
    label = ".".join(loc)
    message = error["msg"].removeprefix("Value error, ")
    hidden = name in ("api_key", "base_url") or "input" not in error or isinstance(error["input"], (dict, list))
    shown = "" if hidden else f" (got {str(error['input'])[:80]!r})"
    return f"{label}{' (' + ', '.join(where) + ')' if where else ''}: {message}{shown}"


def load_settings(flags: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
    """Merge the sources in order of precedence and validate once."""
    flags = dict(flags)
    config = flags.pop("config", None) or environ.get(CONFIG_ENV)
    merged = {**(_read_config(config) if config else {}), **_from_env(environ), **flags}
    try:
        return Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0])) from None


PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def check_environment(environ: Mapping[str, str]) -> list[str]:
    """The proxy and CA settings httpx reads from the environment, checked before a client is built:
    a ConfigError that names the variable (never its value), else the secrets they hold (proxy passwords),
    for the log redactor."""
    import ssl

    import httpx

    secrets: list[str] = []
    for name in PROXY_VARS:
        value = environ.get(name)
        if not value:
            continue
        try:
            url = httpx.URL(value if "://" in value else f"http://{value}")
            if not url.host:
                raise ValueError
        except (httpx.InvalidURL, ValueError, TypeError):
            raise ConfigError(
                f"{name}: not a valid proxy URL (characters such as # / ? in a password must be "
                "percent-encoded); the value is not shown"
            ) from None
        if url.scheme not in ("http", "https"):
            raise ConfigError(f"{name}: {url.scheme}:// proxies are not supported; use an http:// proxy")
        if url.password:
            secrets.append(url.password)
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        value = environ.get(name)
        if not value:
            continue
        try:
            if name == "SSL_CERT_FILE":
                ssl.create_default_context(cafile=value)
            elif not os.path.isdir(value):
                raise OSError("not a directory")
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{name}: cannot load CA certificates from {value[:200]}: {getattr(exc, 'strerror', None) or exc}"
            ) from None
    return secrets
