"""One listing loop: the pages of the listing, first to last, for the poller and ``check`` alike (DESIGN §4).

``ListingLoop`` is the state of one **pass** over the listing and the rules that move it on, with no I/O: the
token to ask for next, the digests of the tokens followed, the pages in a row that listed nothing new, the
strikes of a page that keeps failing. A caller reads a page with that token and hands the loop the page
(``take``) or the error (``failed``); each gives a ``Step`` that says what happened and whether to read on.

- A pass ends at its last page, or at a page token it followed before (the listing went round), never at a
  page count: a million sessions at the default page size is a normal listing.
- ``IDLE_PAGES`` pages in a row that list no session new to the pass end it short (``truncated``): a listing
  that goes round with fresh tokens every time.
- A page that fails is waited for (page 1: nothing to start over from); a resumed token refused with a 4xx,
  or an invalid page, starts the pass over from page 1; a page that fails ``PAGE_STRIKES`` times in a row (or
  is refused twice) ends the pass there, short.

The poller keeps one loop per pass across its cycles (a cycle's deadline only pauses it) and one ``Strikes``
across passes; ``read_listing`` (``check``) runs a loop to its end within one deadline, trying a page that
failed again at once. Both say the same thing, in the same words, for the same listing.
"""

from __future__ import annotations

import hashlib
import operator
import os
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from collector.cadence import Deadline
from collector.errors import AuthError, FetchError, PayloadError
from collector.llamacloud.models import Body, Listed, SessionPage

PAGE_STRIKES = 3
"""A page that fails this many times in a row (or is refused twice) ends the pass there (DESIGN §4)."""
IDLE_PAGES = 100
"""Pages in a row that list no session new to the pass: the listing goes round without a repeated token."""
CAUSE_TEXT = 200
"""A page's error is cut to this in the loop's texts."""


def token_digest(token: str) -> bytes:
    """What a pass keeps of a token it followed: 8 bytes, whatever the token's size."""
    return hashlib.blake2b(token.encode(), digest_size=8).digest()


@dataclass
class Strikes:
    """The page that failed last (its position in the pass) and how many times in a row. The poller keeps one
    for all its passes: a page that ended a pass ends the next one at its first failure there."""

    position: int = 0
    count: int = 0

    def strike(self, position: int) -> int:
        self.count = self.count + 1 if self.position == position else 1
        self.position = position
        return self.count

    def read(self, position: int) -> None:
        """The page at ``position`` was read: a page at or past the one that failed clears the strikes."""
        if position >= self.position:
            self.position, self.count = 0, 0


@dataclass(frozen=True, slots=True)
class KnownPage:
    """A listing page read again, byte for byte as a page read with the same token before, whose every wanted
    session was unchanged then and still is (its row is the same object). Identical bytes validate and decide
    the same: it is taken without a parse (the poller's ``PageMemo``), which is most of an idle pass's CPU."""

    listed: int
    """Items the page listed."""
    keys: tuple[Hashable, ...]
    """The wanted items' keys (``ListingLoop.keys``), in the page's order: the poller's are its table's own key
    objects (``SessionTable.canonical``), so a page kept costs a pointer a session and an idle pass that adds
    them to its ``seen`` makes no object."""
    rows: tuple[bytes | None, ...]
    """Their packed rows when the page was taken: the same objects now, or the page is parsed again."""
    version: int
    """The table's ``version`` when the rows were last found the same: while it has not moved, they are."""
    next_page_token: str | None
    size: int
    digest: int | bytes
    """The body's length and ``body_digest``."""
    unreadable: tuple[str, ...] = ()


class Rows(Protocol):
    """What ``PageMemo`` reads of the sessions' table (``state.SessionTable``)."""

    @property
    def version(self) -> int: ...
    @property
    def row_at(self) -> Callable[[Any], bytes | None]: ...


def body_digest(body: Body) -> int | bytes:
    """What a kept page remembers of its body besides its length: ``hash``, keyed at random for each process, so
    an upstream cannot aim two bodies at one value; where ``PYTHONHASHSEED`` fixes that key, a BLAKE2b keyed with
    this process's own random key (slower: about 70 against 12 microseconds for 40 KB)."""
    return hash(bytes(body)) if _HASH_KEYED else hashlib.blake2b(body, digest_size=16, key=_BODY_KEY).digest()


_HASH_KEYED = os.environ.get("PYTHONHASHSEED", "random") == "random"
_BODY_KEY = os.urandom(32)


class PageMemo:
    """The pages of the listing whose every wanted session was unchanged when last taken (``KnownPage``), by
    their token: one read again byte for byte, its sessions' rows the same objects, is taken without a parse.

    Never more pages than one pass: what the last pass kept waits to be read again in this one (a page read
    again is kept anew or dropped), and what this pass keeps beyond the last pass's count pushes out the last
    pass's first pages (tokens that change from pass to pass are never read again). A new pass drops what
    the last one did not read."""

    def __init__(self) -> None:
        self._last_pass: dict[bytes, KnownPage] = {}
        """What the last pass kept, not read again yet, in its order."""
        self._this_pass: dict[bytes, KnownPage] = {}
        self._bound = 0
        """Pages the last pass kept: this pass keeps no more in all, unless it keeps more itself."""
        self._last: tuple[bytes, int, int | bytes] | None = None
        """The last body read: its token's digest, its length and ``body_digest``."""

    def __len__(self) -> int:
        return len(self._last_pass) + len(self._this_pass)

    def recall(self, token: str | None, body: Body, table: Rows, blocked: Callable[[KnownPage], bool]) -> KnownPage | None:
        """The page ``body`` is, when it is one kept (None: parse it). ``table``: the sessions' packed rows;
        ``blocked``: whether one of these sessions may not be taken as unchanged now (failing, replayed). Called
        on the event loop only (never for a body over ``LARGE_BODY``, which a thread parses)."""
        where = token_digest(token) if token else b""
        known = self._last_pass.pop(where, None) or self._this_pass.pop(where, None)
        self._last = (where, len(body), body_digest(body))
        if known is None or (known.size, known.digest) != self._last[1:]:
            return None
        if known.version != table.version:  # a row changed somewhere since: are these the same objects?
            if not all(map(operator.is_, map(table.row_at, known.keys), known.rows)):
                return None
            known = replace(known, version=table.version)
        if blocked(known):
            return None
        self._keep(where, known)
        return known

    def record(
        self, token: str | None, page: SessionPage, keys: tuple[Hashable, ...], rows: Sequence[bytes | None], version: int
    ) -> None:
        """``page``, read with ``token`` (the last body ``recall`` saw) and taken with every wanted session
        unchanged: ``keys`` and ``rows`` are theirs, read at the table's ``version``."""
        where = token_digest(token) if token else b""
        if self._last is None or self._last[0] != where or page.unreadable:
            return
        _, size, digest = self._last
        self._keep(where, KnownPage(len(page.items), keys, tuple(rows), version, page.next_page_token, size, digest))

    def _keep(self, where: bytes, page: KnownPage) -> None:
        self._this_pass[where] = page
        while self._last_pass and len(self._last_pass) + len(self._this_pass) > self._bound:
            del self._last_pass[next(iter(self._last_pass))]

    def new_pass(self) -> None:
        """A pass begins: what the last one kept is what this one may read again; the rest is dropped."""
        self._last_pass, self._this_pass = self._this_pass, {}
        self._bound = len(self._last_pass)
        self._last = None


@dataclass(frozen=True)
class Step:
    """What one page (or its failure) did to the pass."""

    items: tuple[Listed, ...] = ()
    """The page's wanted items, in its order (none for a ``KnownPage``: it was not parsed)."""
    keys: tuple[Hashable, ...] = ()
    """The wanted items' keys (``ListingLoop.keys``), in the page's order."""
    goes_on: bool = False
    """Read the next page now (the pass is not over and nothing stops it)."""
    waits: str | None = None
    """The page was not read and the pass waits for it (the page's error): page 1 (an outage if nothing else
    answers), or a failure short of ``PAGE_STRIKES``."""
    problem: str | None = None
    """The pass started over from page 1, or ended short: said, counted (``pass_restarted``), never silent."""


@dataclass
class ListingLoop:
    """One pass over the listing's pages (see the module's docstring)."""

    strikes: Strikes = field(default_factory=Strikes)
    token: str | None = None
    """The token of the next page (None: page 1)."""
    tokens: set[bytes] = field(default_factory=set)
    """Digests of the page tokens this pass followed: a token seen again ends the pass."""
    pages: int = 0
    """Pages read since page 1 (the position of the last page read)."""
    idle_pages: int = 0
    """Pages in a row that listed no wanted session new to this pass."""
    seen: set[Hashable] = field(default_factory=set)
    """Wanted sessions this pass listed, as ``keys`` gives them."""
    keys: Callable[[Iterable[str]], Iterable[Hashable]] = iter
    """What ``seen`` holds for a page's session IDs: the IDs themselves, or the poller's table keys
    (``SessionTable.canonical``: a complete pass then finds the sessions it missed by a set difference with its
    table, in C)."""
    ended: bool = False
    truncated: bool = False
    """The pass ended short (a page that keeps failing, a listing that goes round): it knows nothing of what lies
    behind, so it retires nothing."""

    def take(self, page: SessionPage, wanted: Callable[[Listed], bool] | None) -> Step:
        """A page read with ``token``: its wanted items (None: every item is), and the pass moved on (or ended)."""
        items = page.items if wanted is None else tuple(item for item in page.items if wanted(item))
        keys = tuple(self.keys(item.session_id for item in items))
        return self._took(len(page.items), tuple(items), keys, page.next_page_token)

    def take_known(self, page: KnownPage) -> Step:
        """A page read with ``token`` that is, byte for byte, one read before (``KnownPage``): its wanted sessions'
        keys as they were then, the pass moved on as ``take`` moved it."""
        return self._took(page.listed, (), page.keys, page.next_page_token)

    def _took(self, listed: int, items: tuple[Listed, ...], keys: tuple[Hashable, ...], token: str | None) -> Step:
        self.pages += 1
        self.strikes.read(self.pages)
        new = len(keys) < listed  # another shard's or index's: nothing tells whether the listing went round
        before = len(self.seen)
        self.seen.update(keys)
        new = new or len(self.seen) > before  # a wanted session new to the pass
        self.idle_pages = 0 if new else self.idle_pages + 1
        digest = token_digest(token) if token else b""
        if not token or digest in self.tokens:  # the end, or a token seen before: the pass went round
            self.ended = True
            return Step(items, keys)
        if self.idle_pages >= IDLE_PAGES:
            self.ended = self.truncated = True
            return Step(
                items,
                keys,
                problem=f"list: {IDLE_PAGES} pages in a row listed no session new to the pass; the pass "
                "ends there, retires nothing, and the next starts over from page 1",
            )
        self.tokens.add(digest)
        self.token = token
        return Step(items, keys, goes_on=True)

    def failed(self, exc: FetchError | PayloadError) -> Step:
        """The page asked for with ``token`` was not given (an ``AuthError`` is the caller's: it ends everything).
        Wait for it (page 1, or a first failure), start the pass over from page 1 (a resumed token refused, a
        page that is invalid), or, when the same page keeps failing, end the pass there."""
        cause = str(exc)
        if self.token is None:  # page 1: nothing to start over from
            return Step(waits=cause)
        position = self.pages + 1
        strikes = self.strikes.strike(position)
        status = getattr(exc, "status", None)
        refused = isinstance(exc, PayloadError) or (status is not None and 400 <= status < 500 and status != 429)
        if strikes >= PAGE_STRIKES or (refused and strikes >= 2):
            self.ended = self.truncated = True
            return Step(
                problem=f"list: page {position} keeps failing ({cause[:CAUSE_TEXT]}); the pass ends "
                "there, retires nothing, and the next starts over from page 1"
            )
        if refused:
            self.token, self.pages, self.idle_pages = None, 0, 0
            self.tokens.clear()
            return Step(
                goes_on=True, problem=f"list: page {position} refused ({cause[:CAUSE_TEXT]}); the pass starts over from page 1"
            )
        return Step(waits=cause)


@dataclass
class Listing:
    """A whole listing, as ``read_listing`` read it."""

    sessions: list[Listed]
    """Each wanted session once, as the listing first showed it."""
    unreadable: list[str]
    """Items of the listing that did not validate (their ID, or "?")."""
    problems: list[str] = field(default_factory=list)
    """What the pass got over on its way (a refused token that started it over), in the loop's words."""


PageReader = Callable[[str | None, Deadline | None], Awaitable[SessionPage]]


async def read_listing(
    list_page: PageReader, deadline: Deadline | None = None, wanted: Callable[[Listed], bool] | None = None
) -> Listing:
    """One pass of ``ListingLoop`` run to its end, within ``deadline``: what ``check`` would watch. A page that
    failed is tried again at once, until the loop ends the pass; a pass that ends short, a page 1 that fails,
    and the deadline raise ``FetchError`` (or the page's own error)."""
    loop = ListingLoop()
    listing = Listing([], [])
    ids: set[str] = set()
    while True:
        try:
            page = await list_page(loop.token, deadline)
        except AuthError:
            raise
        except (FetchError, PayloadError) as exc:
            if deadline is not None and deadline.expired():
                raise
            step = loop.failed(exc)
            if step.waits is not None and loop.token is None:  # page 1: nothing answered
                raise
        else:
            step = loop.take(page, wanted)
            for item in step.items:
                if item.session_id not in ids:  # each once, as the listing first showed it
                    ids.add(item.session_id)
                    listing.sessions.append(item)
            listing.unreadable.extend(page.unreadable)
        if step.problem is not None:
            if loop.truncated:
                raise FetchError(step.problem, operation="list")
            listing.problems.append(step.problem)
        if loop.ended:
            return listing
        if deadline is not None and deadline.expired():
            raise FetchError(f"list: deadline reached after {loop.pages} pages, before the end of the listing", operation="list")
