"""Async client of the LlamaCloud chat API: list, summary, retrieve.

HTTP is httpx on the ``httpx-aiohttp`` transport (what the official SDK offers
as ``DefaultAioHttpClient``); proxies come from the environment, ``NO_PROXY``
included. httpx chooses the transport once; when it is its aiohttp transport,
each GET is sent on that transport's own aiohttp session straight, as the
transport would send it (``DirectAiohttp``: half the CPU of a request). Tests
pass ``httpx.MockTransport``, which is sent through as it is; ``tests/test_wire``
holds both wires to the same answers. Each exchange has one deadline, from the
request to the last body byte, and a size cap (``bounds``).

Retries 429, 502, 503, 504 and transport or protocol failures with full-jitter
exponential backoff, honours ``Retry-After``, and never sleeps past the
caller's deadline. 401, 403 and 404 are not retried, nor is an answer that is
too large or does not decode. Every request is reported to an ``ApiObserver``.
The transport, clock, sleep and random source are injectable for tests. A
caller's time limit comes as a ``Deadline`` on the caller's clock; the client
only asks it what is left.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import ipaddress
import math
import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Protocol, TypeVar, overload
from urllib.parse import quote, urlencode

import aiohttp
import httpx
from aiohttp.http_exceptions import ContentEncodingError
from httpx_aiohttp import AiohttpTransport, HttpxAiohttpClient
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import BaseModel, ValidationError

from collector import __version__
from collector.cadence import Deadline
from collector.errors import AuthError, Deferred, FetchError, NotFound, PayloadError
from collector.llamacloud.bounds import (
    LARGE_BODY,
    BadStatus,
    BodyTooLarge,
    BodyTooSlow,
    Claim,
    LargeBodies,
    Undecodable,
    check_status,
    read_capped,
    read_pieces,
    refuse_before_reading,
    session_id_problem,
)
from collector.llamacloud.budget import HELD, BudgetTimeout, RequestBudget
from collector.llamacloud.listing import KnownPage, Listing, read_listing
from collector.llamacloud.models import (
    Body,
    Listed,
    ProjectList,
    Session,
    SessionPage,
    Summary,
    parse_page,
    parse_projects,
    parse_session,
    validate_summary,
)

RETRY_STATUS = frozenset({429, 502, 503, 504})
M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")
T = TypeVar("T")
S = TypeVar("S", bound=Summary)
"""A session-shaped answer (summary or retrieve): it names its session."""


class ApiObserver(Protocol):
    def request(self, operation: str, code: str, seconds: float) -> None: ...

    def retry(self, operation: str, reason: str) -> None: ...

    def invalid_payload(self, operation: str) -> None: ...

    def budget_wait(self, seconds: float) -> None: ...

    def rate_limit_remaining(self, value: float | None) -> None: ...


class NullObserver:
    def request(self, operation: str, code: str, seconds: float) -> None: ...

    def retry(self, operation: str, reason: str) -> None: ...

    def invalid_payload(self, operation: str) -> None: ...

    def budget_wait(self, seconds: float) -> None: ...

    def rate_limit_remaining(self, value: float | None) -> None: ...


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def backoff(self, attempt: int, rng: Callable[[], float]) -> float:
        """Full jitter: uniform in [0, min(max_delay, base * 2**attempt))."""
        return rng() * min(self.max_delay, self.base_delay * (2.0**attempt))


RATE_LIMIT_REMAINING = ("x-ratelimit-remaining", "x-ratelimit-remaining-requests", "ratelimit-remaining")
"""Where an API says how many requests it still allows: the common ``X-RateLimit-Remaining``, the per-kind
form OpenAI-style APIs send, and the IETF draft's field. The LlamaCloud API documents none and its SDKs read
none (they read ``retry-after-ms`` and ``retry-after``): the gauge is there for when it, or a gateway in
front of it, sends one."""


def retry_after(value: str | None, now: float, milliseconds: str | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (the vendor's SDKs read it first), else from ``Retry-After``
    (delta-seconds, as a float too, as the SDKs accept, or an HTTP date); None when neither says."""
    for text, scale in ((milliseconds, 0.001), (value, 1.0)):
        seconds = _number(text)
        if seconds is not None:
            return seconds * scale
    if not value:
        return None
    try:
        return max(0.0, parsedate_to_datetime(value.strip()).timestamp() - now)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


READ_HEADERS = frozenset(
    {"content-type", "content-length", "content-encoding", "location", "retry-after", "retry-after-ms", *RATE_LIMIT_REMAINING}
)
"""The response headers the client reads."""


class DirectAiohttp:
    """What ``AiohttpTransport.handle_async_request`` does for a GET, on the same ``ClientSession`` (its
    connector, TLS context and connection limit) and the same proxy, with aiohttp decoding the body (its
    decoder is bounded per piece: a gzip bomb stops at the cap as httpx's does). aiohttp's errors are raised
    as they are: ``failure_reason`` reads them, and a body that does not decode is ``undecodable``."""

    __slots__ = ("_headers", "_proxy", "_proxy_headers", "_timeout", "_transport")

    def __init__(
        self, transport: AiohttpTransport, headers: httpx.Headers, timeouts: Mapping[str, float], *, secure: bool
    ) -> None:
        self._transport = transport
        self._headers = CIMultiDict(headers.items())
        self._timeout = aiohttp.ClientTimeout(
            sock_connect=timeouts["connect"], sock_read=timeouts["read"], connect=timeouts["pool"]
        )
        proxy = transport.proxy
        self._proxy = None if proxy is None else str(proxy.url)
        self._proxy_headers = None if proxy is None else dict(proxy.headers.items())
        """A plain dict: aiohttp copies it per request (a ``CIMultiDict`` it would write the host into)."""
        if proxy is not None and proxy.auth:  # where aiohttp's deprecated ``proxy_auth`` would put it
            credentials = aiohttp.encode_basic_auth(proxy.auth[0], proxy.auth[1])
            to = self._proxy_headers if secure else self._headers  # https: on the CONNECT; http: on each request
            assert to is not None
            to["Proxy-Authorization"] = credentials

    def _session(self) -> aiohttp.ClientSession:
        transport = self._transport
        if not isinstance(transport.client, aiohttp.ClientSession):  # made on first use, as the transport does
            transport.client = transport.get_client()
        return transport.client

    async def exchange(self, url: str, limit: int, claim: Claim, answer: Callable[[int, Mapping[str, str], Body], R]) -> R:
        try:
            async with self._session().request(
                "GET",
                url,
                headers=self._headers,
                allow_redirects=False,
                timeout=self._timeout,
                proxy=self._proxy,
                proxy_headers=self._proxy_headers,
            ) as response:
                status = check_status(response.status)
                headers = read_aiohttp_headers(response.headers)
                body: Body = b""
                if 200 <= status < 300:
                    refuse_before_reading(headers, limit)
                    content = response.content
                    body = await read_pieces(aiter(content.iter_any()), limit, claim, lambda: content.total_raw_bytes)
                return answer(status, headers, body)
        except aiohttp.ClientError as exc:  # a body that does not decode, found with the head or in the body
            if _encoding_error(exc):
                raise Undecodable("the body does not decode as its Content-Encoding says") from None
            raise


def _encoding_error(exc: BaseException) -> bool:
    """Whether aiohttp's ``ContentEncodingError`` is anywhere in the chain (a cut body is not: it is retried)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ContentEncodingError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def read_aiohttp_headers(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    """``read_headers`` of an aiohttp response: the same names, values joined and decoded the same way."""
    found: dict[str, str] = {}
    for name in READ_HEADERS:
        values = headers.getall(name, None)
        if values:
            value = ", ".join(values)
            found[name] = value if value.isascii() else _as_httpx_reads(value)
    return found


def _as_httpx_reads(value: str) -> str:
    """A header value as httpx reads its bytes (UTF-8, else Latin-1), not as aiohttp does (UTF-8 with its
    bytes that are not as lone surrogates, which no UTF-8 encoder takes: a status page would fail on them)."""
    raw = value.encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_headers(headers: httpx.Headers) -> dict[str, str]:
    """``READ_HEADERS`` as ``headers.get`` gives each (its values joined by ``, ``), in one pass over them (a
    lookup in ``httpx.Headers`` goes through them all: seven of them were a tenth of a request's own work)."""
    found: dict[str, str] = {}
    for name, value in headers.multi_items():  # names in lower case, as a lookup compares them
        if name in READ_HEADERS:
            found[name] = f"{found[name]}, {value}" if name in found else value
    return found


def rate_limit_remaining(headers: Mapping[str, str]) -> float | None:
    """The first of ``RATE_LIMIT_REMAINING`` that holds a number."""
    for name in RATE_LIMIT_REMAINING:
        value = _number(headers.get(name))
        if value is not None:
            return value
    return None


def _number(text: str | None) -> float | None:
    """A finite number at or above 0 from a header, short and plain (no ``nan``, ``inf``, ``1_0``); else None."""
    if not text or len(text) > 32:
        return None
    text = text.strip()
    if not text.isascii() or not text.replace(".", "", 1).isdigit():
        return None
    return float(text)


def session_path(session_id: str, suffix: str = "") -> str:
    """``/api/v1/chat/<id>``: the ID as one encoded segment; ``.`` and ``..`` are refused."""
    problem = session_id_problem(session_id)
    if problem:
        raise ValueError(problem)
    return f"/api/v1/chat/{quote(session_id, safe='')}{suffix}"


class _Answer:
    __slots__ = ("body", "content_type", "location", "retry_after", "status")

    def __init__(
        self, status: int, body: Body, content_type: str, retry_after: float | None, location: str | None = None
    ) -> None:
        self.status, self.body, self.content_type, self.retry_after = status, body, content_type, retry_after
        self.location = location

    def take_body(self) -> Body:
        """The body, which this answer then no longer holds: whatever keeps the answer alive after (an
        exception's frames, until the cycle collector frees them) does not keep 30 MB with it."""
        body, self.body = self.body, b""
        return body


class LlamaCloudClient:
    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        organization_id: str | None,
        project_id: str | None = None,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        max_response_bytes: int,
        page_size: int,
        max_events: int,
        transport: httpx.AsyncBaseTransport | None = None,
        observer: ApiObserver | None = None,
        max_requests_per_second: float | None,
        retry: RetryPolicy = RetryPolicy(),
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._params = {k: v for k, v in (("project_id", project_id), ("organization_id", organization_id)) if v}
        headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "Accept-Encoding": "gzip",
            "User-Agent": f"llamacloud-collector/{__version__}",
        }
        self._http = HttpxAiohttpClient(
            transport=transport,
            trust_env=True,
            mounts=no_proxy_cidr_mounts(base_url, os.environ),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )
        # httpx picks the transport once: aiohttp direct, or through the proxy the environment names
        # (NO_PROXY honoured). Every request goes to this one origin, so the choice does not change.
        # Requests are then sent straight to it: httpx's client layer would re-parse each URL three
        # times and feed a cookie jar the API never uses (a third of the CPU of a sync; bench/).
        self._base = base_url.rstrip("/")
        self._transport = self._http._transport_for_url(httpx.URL(self._base))
        self._headers = httpx.Headers(headers)  # normalised once: each request copies it as it is
        self._timeouts = {"connect": connect_timeout, "read": read_timeout, "pool": connect_timeout}
        self._direct = (
            DirectAiohttp(self._transport, self._headers, self._timeouts, secure=self._base.startswith("https:"))
            if isinstance(self._transport, AiohttpTransport)
            else None
        )
        """Requests sent on the aiohttp session of httpx's own aiohttp transport, as it would send them, but
        without an ``httpx.Request`` and ``httpx.Response`` around each: half the CPU of a request (bench/).
        An injected transport (the tests' ``MockTransport``) is sent through as it is."""
        self._exchange_timeout = read_timeout + connect_timeout
        self._max_bytes, self._page_size = max_response_bytes, page_size
        self._max_events = max_events
        self._large = LargeBodies()
        self._threads = ThreadPoolExecutor(1, thread_name_prefix="parse")
        """Where large bodies are parsed, one at a time (the gate lets one through)."""
        self._observer = observer or NullObserver()
        self._retry = retry
        self._clock, self._wall_clock, self._sleep, self._rng = clock, wall_clock, sleep, rng
        self._budget = RequestBudget(max_requests_per_second, waited=self._observer.budget_wait, clock=clock, sleep=sleep)
        """Every request's place in ``--max-requests-per-second`` (this shard's share), and a 429's pause."""
        self._slots = asyncio.Semaphore(max_connections)
        """Requests on the wire at once, whichever project's poller sends them: no more than the pool has
        connections, taken in turn (a wait for a connection inside the pool would count against the request's
        own timeout, and one project's fetches would crowd out another's listing)."""

    @property
    def project_id(self) -> str | None:
        """The project its requests are sent for (None: the key's default)."""
        return self._params.get("project_id")

    def for_project(self, project_id: str) -> LlamaCloudClient:
        """The same client (connections, request budget, 429 pauses, the gate of large bodies), its requests
        sent for ``project_id``: what each project's poller gets, so projects share one budget."""
        view = copy.copy(self)
        view._params = {**self._params, "project_id": project_id}
        return view

    async def list_projects(self, deadline: Deadline | None = None) -> ProjectList:
        """``GET /api/v1/projects?organization_id=``: the organization's projects (the key's, without one)."""
        organization = {k: v for k, v in self._params.items() if k == "organization_id"}
        return await self._get("projects", "/api/v1/projects", ProjectList, deadline, organization, parse_projects, scoped=False)

    async def aclose(self) -> None:
        await self._http.aclose()
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> LlamaCloudClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @overload
    async def list_page(self, token: str | None = None, deadline: Deadline | None = None) -> SessionPage: ...

    @overload
    async def list_page(
        self, token: str | None, deadline: Deadline | None, recall: Callable[[Body], KnownPage | None] | None
    ) -> SessionPage | KnownPage: ...

    async def list_page(
        self,
        token: str | None = None,
        deadline: Deadline | None = None,
        recall: Callable[[Body], KnownPage | None] | None = None,
    ) -> SessionPage | KnownPage:
        """One page of the listing: ``token`` is the previous page's ``next_page_token`` (None: the first).
        ``recall`` (the poller's ``PageMemo``) may know the body as a page read before: then it is not parsed."""
        params: dict[str, str | int] = {"page_size": self._page_size, **({"page_token": token} if token else {})}
        parse: Callable[[Body], SessionPage | KnownPage] = (
            parse_page if recall is None else (lambda body: (len(body) <= LARGE_BODY and recall(body)) or parse_page(body))
        )
        page = await self._get("list", "/api/v1/chat", SessionPage, deadline, params, parse=parse)
        for _ in page.unreadable:
            self._observer.invalid_payload("list")
        return page

    async def list_sessions(self, deadline: Deadline | None = None, wanted: Callable[[Listed], bool] | None = None) -> Listing:
        """Every session of the project (those ``wanted``): one pass of the listing loop the poller runs too, read
        to its end within the deadline (``listing.read_listing``: it ends and fails as the poller's pass does)."""
        return await read_listing(self.list_page, deadline, wanted)

    async def summary(self, session_id: str, deadline: Deadline | None = None) -> Summary:
        return self._same_session(
            "summary",
            session_id,
            await self._get("summary", self._path("summary", session_id, "/summary"), Summary, deadline, parse=validate_summary),
        )

    async def retrieve(
        self, session_id: str, deadline: Deadline | None = None, off_loop: Callable[[Callable[[], Session]], T] | None = None
    ) -> Session | T:
        """The session's history. A large body (over ``LARGE_BODY``) is handled in a thread, off the event loop:
        ``off_loop`` is called there with the function that parses it, and its result is returned instead. A
        history of a million events is never held, parsed or counted on the loop. The gate of large bodies is
        held until that thread is done, even when the caller gives up first (the cycle's deadline)."""

        def read(body: Body) -> Session:
            session = parse_session(body, self._max_events)
            if session.session_id != session_id:
                raise ValueError("the answer names another session")
            return session

        def parse(body: Body) -> Session | T:
            if off_loop is None or len(body) <= LARGE_BODY:
                return parse_session(body, self._max_events)
            return off_loop(functools.partial(read, body))

        answer = await self._get("retrieve", self._path("retrieve", session_id), Session, deadline, parse=parse)
        return self._same_session("retrieve", session_id, answer) if isinstance(answer, Session) else answer

    def _path(self, operation: str, session_id: str, suffix: str = "") -> str:
        try:
            return session_path(session_id, suffix)
        except ValueError as exc:
            self._observer.invalid_payload(operation)
            raise PayloadError(f"{operation}: {exc}", operation=operation) from None

    def _same_session(self, operation: str, session_id: str, answer: S) -> S:
        if answer.session_id != session_id:
            self._observer.invalid_payload(operation)
            raise PayloadError(f"{operation}: the answer names another session", operation=operation)
        return answer

    async def _take_slot(self, deadline: Deadline | None) -> None:
        """A connection slot (``_slots``), in turn: the wait is the caller's, like the budget's (``HELD``: not a
        hang of its session), and a wait that reaches the deadline gives up as the budget's does."""
        if not self._slots.locked():
            await self._slots.acquire()
            return
        started = self._clock()
        remaining = None if deadline is None or math.isinf(deadline.remaining()) else max(0.0, deadline.remaining())
        try:
            async with asyncio.timeout(remaining):
                await self._slots.acquire()
        except TimeoutError:
            raise BudgetTimeout("waited for a connection until the deadline", paused=False) from None
        finally:
            held = HELD.get()
            if held is not None:
                held[0] += self._clock() - started

    async def _exchange(self, path: str, params: Mapping[str, str | int], seconds: float, claim: Claim) -> _Answer:
        """One GET, from request to last body byte, within ``seconds`` and the size cap: straight on aiohttp
        when httpx chose its aiohttp transport (``_direct``), else through the transport httpx chose."""
        url = f"{self._base}{path}?{urlencode(params)}" if params else self._base + path
        async with asyncio.timeout(seconds):
            if self._direct is not None:
                return await self._direct.exchange(url, self._max_bytes, claim, self._answer)
            request = httpx.Request("GET", url, headers=self._headers, extensions={"timeout": self._timeouts})
            response = await self._transport.handle_async_request(request)
            try:
                status = check_status(response.status_code)
                headers = read_headers(response.headers)
                body = await read_capped(response, self._max_bytes, claim, headers) if 200 <= status < 300 else b""
                return self._answer(status, headers, body)
            finally:
                await response.aclose()

    def _answer(self, status: int, headers: Mapping[str, str], body: Body) -> _Answer:
        self._observer.rate_limit_remaining(rate_limit_remaining(headers))  # None: absent again
        wait = retry_after(headers.get("retry-after"), self._wall_clock(), headers.get("retry-after-ms"))
        return _Answer(status, body, headers.get("content-type", ""), wait, headers.get("location"))

    async def _get(
        self,
        operation: str,
        path: str,
        model: type[M],
        deadline: Deadline | None,
        params: Mapping[str, str | int] | None = None,
        parse: Callable[[Body], R] | None = None,
        *,
        scoped: bool = True,
    ) -> M | R:
        """One request, retried as the policy says; ``scoped``: sent with the client's ``project_id`` and
        ``organization_id`` (the projects listing takes only the organization, in ``params``), and a 429 to it
        pauses the whole client (one to the projects listing slows only that listing: it is asked once a slot,
        before the projects' cycles, and would renew the pause every slot)."""
        query = {**(self._params if scoped else {}), **(params or {})}
        attempt = 0
        while True:
            try:
                await self._budget.spend(operation, deadline)
                await self._take_slot(deadline)
            except BudgetTimeout as exc:  # not sent: the cycle carries the work on, as a cut cycle does
                what = "HTTP 429: " if exc.paused else ""
                raise Deferred(f"{operation}: {what}{exc}", operation=operation, status=429 if exc.paused else None) from None
            started = self._clock()
            timeout = self._exchange_timeout if deadline is None else deadline.within(self._exchange_timeout)
            claim = self._large.claim()  # a large body holds the gate from its read to the end of its parse
            try:
                try:
                    if timeout <= 0:
                        raise TimeoutError
                    answer = await self._exchange(path, query, timeout, claim)
                except (BodyTooLarge, BodyTooSlow, httpx.DecodingError, Undecodable) as exc:  # the same again would not help
                    self._observer.request(operation, "error", self._clock() - started)
                    self._observer.invalid_payload(operation)
                    what = {BodyTooLarge: "too large", BodyTooSlow: "too slow"}.get(type(exc), "undecodable body")
                    raise PayloadError(f"{operation}: {what}: {_describe(exc)}", operation=operation) from None
                except (TimeoutError, httpx.HTTPError, aiohttp.ClientError, BadStatus, ValueError, OSError) as exc:
                    self._observer.request(operation, "error", self._clock() - started)
                    untrusted = untrusted_certificate(exc)
                    if untrusted is not None:  # it will not fix itself within a cycle: said once, not retried
                        raise FetchError(
                            f"{operation}: the server's TLS certificate is not trusted ({untrusted}); "
                            "to trust a private CA, set SSL_CERT_FILE or SSL_CERT_DIR",
                            operation=operation,
                        ) from None
                    reason, wait = failure_reason(exc), None
                    failure = FetchError(
                        f"{operation}: timed out" if reason == "timeout" else f"{operation}: transport error: {_describe(exc)}",
                        operation=operation,
                    )
                else:
                    status = answer.status
                    self._observer.request(operation, str(status), self._clock() - started)
                    if 200 <= status < 300:
                        reader: Callable[[Body], M | R] = parse or model.model_validate_json
                        return await self._parse(operation, answer, reader, claim)
                    reason = str(status)
                    failure = _status_error(operation, status, answer.location)
                    if status not in RETRY_STATUS:
                        raise failure
                    wait = answer.retry_after
                    if status == 429 and scoped:  # the whole client waits (its backoff when it said not how long)
                        self._budget.pause(wait if wait is not None else self._retry.backoff(attempt + 1, self._rng))
                        wait = 0.0
            finally:
                claim.release()
                self._slots.release()
            attempt += 1
            delay = wait if wait is not None else self._retry.backoff(attempt, self._rng)
            if attempt >= self._retry.max_attempts or (deadline is not None and delay > deadline.remaining()):
                raise failure
            self._observer.retry(operation, reason)
            if delay:
                await self._sleep(delay)

    async def _parse(self, operation: str, answer: _Answer, parse: Callable[[Body], R], claim: Claim) -> R:
        """The answer's body as ``parse`` reads it: a large one in a thread, off the loop, whose claim on the
        gate of large bodies lasts until the thread is done."""
        content_type = answer.content_type
        if content_type and "json" not in content_type:  # an error page; no header at all is tried as JSON
            self._observer.invalid_payload(operation)
            raise PayloadError(f"{operation}: expected JSON, got content type {content_type[:60]!r}", operation=operation)
        try:
            if len(answer.body) <= LARGE_BODY:
                return parse(answer.body)
            return await claim.in_thread(self._threads, parse, answer.take_body())
        except ValidationError as exc:
            self._observer.invalid_payload(operation)
            first = exc.errors(include_input=False, include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])[:120]
            raise PayloadError(
                f"{operation}: invalid payload at {where or 'body'}: {first['msg'][:200]}", operation=operation
            ) from None
        except (ValueError, UnicodeDecodeError, RecursionError, MemoryError) as exc:
            self._observer.invalid_payload(operation)
            raise PayloadError(f"{operation}: invalid payload: {str(exc)[:200]}", operation=operation) from None


def no_proxy_cidr_mounts(base_url: str, environ: Mapping[str, str]) -> dict[str, None]:
    """``NO_PROXY`` CIDR entries (``10.0.0.0/8``, common in Kubernetes), which httpx does not read: when the
    base URL's host is an address inside one, it is reached directly."""
    host = httpx.URL(base_url).host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return {}
    entries = (environ.get("NO_PROXY") or environ.get("no_proxy") or "").split(",")
    for entry in (e.strip() for e in entries):
        if "/" not in entry:
            continue
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return {f"all://{host if address.version == 4 else f'[{host}]'}": None}
        except ValueError:
            continue
    return {}


def untrusted_certificate(exc: BaseException) -> str | None:
    """Why the server's certificate was refused, when that is what failed (anywhere in the chain)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, aiohttp.ClientConnectorCertificateError):  # an ssl.CertificateError too
            current = current.certificate_error
        if isinstance(current, ssl.SSLCertVerificationError):
            return (getattr(current, "verify_message", None) or str(current))[:160]
        current = current.__cause__ or current.__context__
    return None


def failure_reason(exc: BaseException) -> str:
    """``timeout`` or ``transport``, from what really failed.

    httpx-aiohttp maps every ``aiohttp.ClientConnectionError`` (a reset, a server
    that hung up) to ``httpx.ConnectTimeout``; the aiohttp error it chains is the truth.
    """
    cause = exc.__cause__ if isinstance(exc, httpx.HTTPError) and exc.__cause__ is not None else exc
    if isinstance(cause, aiohttp.ClientError):
        return "timeout" if isinstance(cause, TimeoutError) else "transport"
    return "timeout" if isinstance(cause, (TimeoutError, httpx.TimeoutException)) else "transport"


def _describe(exc: BaseException) -> str:
    """A short, single-line reason: the exception's type and the start of its message."""
    text = " ".join(str(exc).split())[:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _status_error(operation: str, status: int, location: str | None = None) -> FetchError:
    if status in (401, 403):
        return AuthError(f"{operation}: HTTP {status}: the API key was refused", operation=operation, status=status)
    if status == 404:
        return NotFound(f"{operation}: HTTP 404: not found", operation=operation, status=status)
    if 300 <= status < 400:  # not followed: the key must not go wherever a redirect points
        where = " ".join(str(location or "?").split())[:200]
        return FetchError(
            f"{operation}: HTTP {status} redirect to {where}: set --base-url to where the API is "
            "(an http:// URL the server moves to https:// is the usual cause)",
            operation=operation,
            status=status,
        )
    return FetchError(f"{operation}: HTTP {status}", operation=operation, status=status)
