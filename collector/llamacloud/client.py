"""Async client of the LlamaCloud chat API: list, summary, retrieve.

One shared ``httpx.AsyncClient`` (connection pool). Retries 429, 502, 503, 504
and transport errors with full-jitter exponential backoff, honours
``Retry-After``, and never sleeps past the caller's deadline. 401, 403 and 404
are not retried. Every request is reported to an ``ApiObserver``. The
transport, clock, sleep and random source are injectable for tests.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import quote, urlencode
from typing import Protocol, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from collector import __version__
from collector.errors import AuthError, FetchError, NotFound, PayloadError
from collector.llamacloud.models import Session, SessionPage, Summary, parse_page, parse_session
from collector.llamacloud.transport import build_transport

RETRY_STATUS = frozenset({429, 502, 503, 504})
PAGE_SIZE = 100
M = TypeVar("M", bound=BaseModel)


class ApiObserver(Protocol):
    def request(self, endpoint: str, code: str, seconds: float) -> None: ...

    def retry(self, endpoint: str, reason: str) -> None: ...

    def invalid_payload(self, endpoint: str) -> None: ...


class NullObserver:
    def request(self, endpoint: str, code: str, seconds: float) -> None: ...

    def retry(self, endpoint: str, reason: str) -> None: ...

    def invalid_payload(self, endpoint: str) -> None: ...


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def backoff(self, attempt: int, rng: Callable[[], float]) -> float:
        """Full jitter: uniform in [0, min(max_delay, base * 2**attempt))."""
        return rng() * min(self.max_delay, self.base_delay * (2**attempt))


@dataclass
class Listing:
    sessions: list[Summary]
    unreadable: list[str]
    """Items of the listing that did not validate (their ID, or "?")."""


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


class LlamaCloudClient:
    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        project_id: str | None = None,
        organization_id: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_connections: int = 8,
        transport: httpx.AsyncBaseTransport | None = None,
        observer: ApiObserver | None = None,
        retry: RetryPolicy = RetryPolicy(),
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._params = {k: v for k, v in (("project_id", project_id), ("organization_id", organization_id)) if v}
        headers = httpx.Headers({"Authorization": f"Bearer {api_key}", "Accept": "application/json",
                                 "Accept-Encoding": "gzip", "User-Agent": f"llamacloud-collector/{__version__}"})
        self._lean = build_transport(max_connections, connect_timeout, read_timeout) if transport is None else None
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=headers,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport if transport is not None else self._lean,
        )
        self._base, self._headers = self._http.base_url, headers
        self._observer = observer or NullObserver()
        self._retry = retry
        self._clock, self._wall_clock, self._sleep, self._rng = clock, wall_clock, sleep, rng

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> LlamaCloudClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def list_sessions(self, deadline: float | None = None) -> Listing:
        """Every session of the project, following ``next_page_token``."""
        listing = Listing([], [])
        token: str | None = None
        seen: set[str] = set()
        while True:
            params = {"page_size": PAGE_SIZE, **({"page_token": token} if token else {})}
            page = await self._get("list", "/api/v1/chat", SessionPage, deadline, params, parse=parse_page)
            listing.sessions.extend(page.items)
            listing.unreadable.extend(page.unreadable)
            for _ in page.unreadable:
                self._observer.invalid_payload("list")
            token = page.next_page_token
            if not token or token in seen:
                return listing
            seen.add(token)

    async def summary(self, session_id: str, deadline: float | None = None) -> Summary:
        return await self._get("summary", f"/api/v1/chat/{quote(session_id, safe='')}/summary", Summary, deadline)

    async def retrieve(self, session_id: str, deadline: float | None = None) -> Session:
        return await self._get("retrieve", f"/api/v1/chat/{quote(session_id, safe='')}", Session, deadline,
                               parse=parse_session)

    async def _get(self, endpoint: str, path: str, model: type[M], deadline: float | None,
                   params: dict | None = None, parse: Callable[[bytes], M] | None = None) -> M:
        attempt = 0
        while True:
            started = self._clock()
            try:
                response = await self._send(path, {**self._params, **(params or {})})
                body = response.content
            except httpx.DecodingError as exc:  # a body that claims gzip and is not
                self._observer.request(endpoint, "error", self._clock() - started)
                self._observer.invalid_payload(endpoint)
                raise PayloadError(f"{endpoint}: undecodable body: {exc}", endpoint=endpoint) from None
            except httpx.TransportError as exc:
                self._observer.request(endpoint, "error", self._clock() - started)
                reason = "timeout" if isinstance(exc, httpx.TimeoutException) else "transport"
                failure = FetchError(f"{endpoint}: {reason} error: {type(exc).__name__}", endpoint=endpoint)
                wait = None
            else:
                status = response.status_code
                self._observer.request(endpoint, str(status), self._clock() - started)
                if 200 <= status < 300:
                    return self._parse(endpoint, response, body, parse or model.model_validate_json)
                reason = str(status)
                failure = _status_error(endpoint, status)
                if status not in RETRY_STATUS:
                    raise failure
                wait = retry_after(response.headers.get("retry-after"), self._wall_clock())
            attempt += 1
            delay = wait if wait is not None else self._retry.backoff(attempt, self._rng)
            if attempt >= self._retry.max_attempts or (
                deadline is not None and self._clock() + delay > deadline
            ):
                raise failure
            self._observer.retry(endpoint, reason)
            await self._sleep(delay)

    async def _send(self, path: str, params: dict) -> httpx.Response:
        """GET through httpx; with the lean transport, straight to it (no client-side URL re-parsing)."""
        if self._lean is None:
            return await self._http.send(self._http.build_request("GET", path, params=params))
        target = self._base.raw_path.rstrip(b"/") + path.encode("ascii")
        if params:
            target += b"?" + urlencode(params).encode()
        request = httpx.Request("GET", self._base.copy_with(raw_path=target), headers=self._headers)
        response = await self._lean.handle_async_request(request)
        await response.aread()
        return response

    def _parse(self, endpoint: str, response: httpx.Response, body: bytes, parse: Callable[[bytes], M]) -> M:
        content_type = response.headers.get("content-type", "")
        if content_type and "json" not in content_type:  # an error page; no header at all is tried as JSON
            self._observer.invalid_payload(endpoint)
            raise PayloadError(f"{endpoint}: expected JSON, got content type {content_type or 'none'!r}",
                               endpoint=endpoint)
        try:
            return parse(body)
        except ValidationError as exc:
            self._observer.invalid_payload(endpoint)
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise PayloadError(f"{endpoint}: invalid payload at {where or 'body'}: {first['msg']}",
                               endpoint=endpoint) from None
        except (ValueError, UnicodeDecodeError) as exc:
            self._observer.invalid_payload(endpoint)
            raise PayloadError(f"{endpoint}: invalid payload: {exc}", endpoint=endpoint) from None


def _status_error(endpoint: str, status: int) -> FetchError:
    if status in (401, 403):
        return AuthError(f"{endpoint}: HTTP {status}: the API key was refused", endpoint=endpoint, status=status)
    if status == 404:
        return NotFound(f"{endpoint}: HTTP 404: not found", endpoint=endpoint, status=status)
    return FetchError(f"{endpoint}: HTTP {status}", endpoint=endpoint, status=status)
