"""The rule of each stored field, declared beside it, and the codec generated from a dataclass's fields.

A stored dataclass declares each field's rule in its metadata::

    cursor: int = field(default=0, metadata=stored(COUNT))

``Codec(cls, where)`` then encodes, decodes, validates and refuses unknown fields for every field of ``cls``,
in declaration order: nothing is listed by hand, so a new field cannot be written and then dropped on the way
back. A field declared without a rule makes ``Codec`` raise ``TypeError`` naming it (the module that builds
the codec does not import), and ``tests/test_storage_codec.py`` names it too.

The same rule reads and writes: ``encode`` makes the same check as ``decode`` and raises
``StoredValueError`` for a value a restart would refuse, so such a value is never written. A field missing from
an older release's row takes its default (a field without a default is read as ``None``, which its rule
refuses); a field this release does not know raises ``UnknownField`` (a newer release wrote the file).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from functools import partial
from typing import Any, Generic, TypeVar

from collector.aggregates import StoredValueError, UnknownField, count, finite
from collector.llamacloud.bounds import session_id_problem

MAX_TEXT = 1 << 16
"""The longest stored text (a title is cut to ``MAX_TITLE`` long before)."""
STORED = "collector.stored"
"""The metadata key of a field's ``Stored`` declaration."""

T = TypeVar("T")


Coder = Callable[[Any], Any]


class Rule:
    """How one stored value is written and read back, checked the same way both ways."""

    def encode(self, value: Any, where: str) -> Any:
        """The value as stored (JSON or text); ``StoredValueError`` if ``decode`` would refuse it."""
        raise NotImplementedError

    def decode(self, value: Any, where: str) -> Any:
        """The value read from the file; ``StoredValueError`` (or ``UnknownField``) if it is not one."""
        raise NotImplementedError

    def bind(self, where: str) -> tuple[Coder, Coder]:
        """``encode`` and ``decode`` of the field ``where`` names, compiled once (a row codec calls them for
        every row)."""
        encode, decode = self.encode, self.decode
        return (lambda value: encode(value, where)), (lambda value: decode(value, where))


@dataclass(frozen=True)
class Stored:
    """A field's storage declaration: its rule, and whether a retired session's row keeps it."""

    rule: Rule
    kept_retired: bool = True
    """False: a session that retires drops it (its default), so a retired row stays small (DESIGN §4)."""


def stored(rule: Rule, *, kept_retired: bool = True) -> dict[str, Stored]:
    """The metadata of a stored field: ``field(default=..., metadata=stored(COUNT))``."""
    return {STORED: Stored(rule, kept_retired)}


def declaration(cls: type, name: str) -> Stored:
    """The storage declaration of ``cls.name``; ``TypeError`` naming the field when it has none."""
    for f in fields(cls):
        if f.name == name:
            found = f.metadata.get(STORED)
            if not isinstance(found, Stored):
                raise TypeError(
                    f"{cls.__name__}.{name} has no storage rule: declare it with field(..., metadata=stored(RULE)) "
                    "(collector/storage/rules.py lists the rules)"
                )
            return found
    raise TypeError(f"{cls.__name__} has no field {name!r}")


# -- the rules of JSON rows ---------------------------------------------------------------------------


class Text(Rule):
    """A string of at most ``MAX_TEXT`` characters."""

    def decode(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise StoredValueError(f"{where}: not a string")
        return value

    encode = decode


class SessionId(Rule):
    """A session ID the API could have given (``session_id_problem``): printable, 1 to 256 characters. It keys
    the session's rows, and SQLite compares no text past a NUL."""

    def decode(self, value: Any, where: str) -> str:
        problem = session_id_problem(value) if isinstance(value, str) else "not a string"
        if problem:
            raise StoredValueError(f"{where}: {problem}")
        return str(value)

    encode = decode


class Count(Rule):
    """An exact integer in [0, 2**53] (a bool is not one)."""

    def decode(self, value: Any, where: str) -> int:
        return count(value, where)

    encode = decode


class Measure(Rule):
    """A finite number in [0, 2**53], stored and read as a float."""

    def decode(self, value: Any, where: str) -> float:
        return finite(value, where)

    encode = decode


class Flag(Rule):
    """True or False."""

    def decode(self, value: Any, where: str) -> bool:
        if type(value) is not bool:
            raise StoredValueError(f"{where}: not a boolean")
        return value

    encode = decode


@dataclass(frozen=True)
class Nullable(Rule):
    """None, or a value of ``rule``."""

    rule: Rule

    def encode(self, value: Any, where: str) -> Any:
        return None if value is None else self.rule.encode(value, where)

    def decode(self, value: Any, where: str) -> Any:
        return None if value is None else self.rule.decode(value, where)

    def bind(self, where: str) -> tuple[Coder, Coder]:
        encode, decode = self.rule.bind(where)
        return (lambda value: None if value is None else encode(value)), (lambda value: None if value is None else decode(value))


class Texts(Rule):
    """A tuple of strings, stored as a list."""

    def decode(self, value: Any, where: str) -> tuple[str, ...]:
        if not isinstance(value, (list, tuple)) or not all(isinstance(i, str) for i in value):
            raise StoredValueError(f"{where}: not a list of strings")
        return tuple(value)

    def encode(self, value: Any, where: str) -> list[str]:
        return list(self.decode(value, where))


@dataclass(frozen=True)
class Fixed(Rule):
    """A tuple of one value per rule, stored as a list; ``shape`` names its parts in the message."""

    rules: tuple[Rule, ...]
    shape: str

    def _parts(self, value: Any, where: str) -> Any:
        if not isinstance(value, (list, tuple)) or len(value) != len(self.rules):
            raise StoredValueError(f"{where}: not {self.shape}")
        return value

    def decode(self, value: Any, where: str) -> tuple[Any, ...]:
        return tuple(r.decode(v, where) for r, v in zip(self.rules, self._parts(value, where), strict=True))

    def encode(self, value: Any, where: str) -> list[Any]:
        return [r.encode(v, where) for r, v in zip(self.rules, self._parts(value, where), strict=True)]


@dataclass(frozen=True)
class Record(Rule, Generic[T]):
    """A stored dataclass inside a row, as a JSON object of its fields (``Codec``); ``ignored`` are keys an
    older release wrote that are read past."""

    cls: type[T]
    ignored: frozenset[str] = frozenset()

    def encode(self, value: Any, where: str) -> dict[str, Any]:
        encoded: dict[str, Any] = self.bind(where)[0](value)
        return encoded

    def decode(self, value: Any, where: str) -> T:
        result: T = self.bind(where)[1](value)
        return result

    def bind(self, where: str) -> tuple[Coder, Coder]:
        codec = Codec(self.cls, where, ".", self.ignored)

        def encode(value: Any) -> dict[str, Any]:
            if not isinstance(value, self.cls):
                raise StoredValueError(f"{where}: not a {self.cls.__name__}")
            return codec.encode(value)

        def decode(value: Any) -> T:
            if not isinstance(value, dict):
                raise StoredValueError(f"{where}: not a mapping")
            return codec.decode(value)

        return encode, decode


TEXT = Text()
SESSION_ID = SessionId()
COUNT = Count()
MEASURE = Measure()
FLAG = Flag()
TEXTS = Texts()


def optional(rule: Rule) -> Rule:
    return Nullable(rule)


def fixed(*rules: Rule, shape: str) -> Rule:
    return Fixed(rules, shape)


def record(cls: type[T], ignored: tuple[str, ...] = ()) -> Record[T]:
    return Record(cls, frozenset(ignored))


# -- the rules of text values (the meta table) ----------------------------------------------------------


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise StoredValueError(f"{where}: not a string")
    return value


class VersionText(Rule):
    """A count written in decimal."""

    def encode(self, value: Any, where: str) -> str:
        return str(count(value, where))

    def decode(self, value: Any, where: str) -> int:
        return count(int(_text(value, where)), where)


class FlagText(Rule):
    """True as ``"1"``, False as ``"0"``."""

    def encode(self, value: Any, where: str) -> str:
        return "1" if FLAG.encode(value, where) else "0"

    def decode(self, value: Any, where: str) -> bool:
        if value not in ("0", "1"):
            raise StoredValueError(f"{where}: not 0 or 1")
        return bool(value == "1")


class MeasureText(Rule):
    """A finite number in [0, 2**53] written as Python writes a float."""

    def encode(self, value: Any, where: str) -> str:
        return str(finite(value, where))

    def decode(self, value: Any, where: str) -> float:
        try:
            number = float(_text(value, where))
        except ValueError:
            raise StoredValueError(f"{where}: {value[:40]!r} is not a number") from None
        return finite(number, where)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@dataclass(frozen=True)
class JsonText(Rule):
    """A JSON document (no NaN nor infinity); with ``empty_none``, None is the empty text."""

    empty_none: bool = False

    def encode(self, value: Any, where: str) -> str:
        if value is None and self.empty_none:
            return ""
        try:
            return json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise StoredValueError(f"{where}: not JSON ({exc})") from None

    def decode(self, value: Any, where: str) -> Any:
        if value == "" and self.empty_none:
            return None
        if not isinstance(value, str):
            raise StoredValueError(f"{where}: not a string")
        try:
            return json.loads(value, parse_constant=_no_constant)
        except ValueError as exc:
            raise StoredValueError(f"{where}: not JSON ({str(exc)[:80]})") from None


VERSION_TEXT = VersionText()
FLAG_TEXT = FlagText()
MEASURE_TEXT = MeasureText()
JSON_TEXT = JsonText()
OPTIONAL_JSON_TEXT = JsonText(empty_none=True)


# -- the codec ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Slot:
    name: str
    encode: Coder
    decode: Coder
    required: bool
    default: Callable[[], Any]


class Codec(Generic[T]):
    """Encode, decode, validation and the unknown-field check of ``cls``, generated from its fields.

    ``where`` names a row in messages (``session``); a field is named ``<where><joiner><field>``
    (``session cursor``, ``session job.turns``), an unknown one ``<where> field '<name>'``."""

    def __init__(self, cls: type[T], where: str, joiner: str = " ", ignored: frozenset[str] = frozenset()) -> None:
        self.cls, self.where, self.ignored = cls, where, ignored
        self.slots = tuple(
            _Slot(
                f.name,
                *declaration(cls, f.name).rule.bind(f"{where}{joiner}{f.name}"),
                f.default is MISSING and f.default_factory is MISSING,
                f.default_factory if f.default_factory is not MISSING else partial(_same, f.default),
            )
            for f in fields(cls)  # type: ignore[arg-type]  # cls is a dataclass: fields() raises otherwise
        )
        self.names = frozenset(s.name for s in self.slots)
        self._known = self.names | ignored
        self._by_name = {s.name: s for s in self.slots}
        self._encoders = tuple((s.name, s.encode) for s in self.slots)
        self._decoders = tuple((s.name, s.decode, s.required) for s in self.slots)

    def encode(self, value: T) -> dict[str, Any]:
        """Every field, by name, each checked by its rule."""
        return {name: encode(getattr(value, name)) for name, encode in self._encoders}

    def decode(self, row: Mapping[str, Any]) -> T:
        """The record of ``row``: a field it lacks takes its default; one this release does not know raises
        ``UnknownField``."""
        if not row.keys() <= self._known:
            raise UnknownField(f"{self.where} field {sorted(row.keys() - self._known)[0]!r}")
        values = {}
        for name, decode, required in self._decoders:
            if name in row:
                values[name] = decode(row[name])
            elif required:
                values[name] = decode(None)  # refused by its rule, with its message
        return self.cls(**values)

    def value(self, row: Mapping[str, Any], name: str) -> Any:
        """One field of ``row`` alone (its default when absent), nothing else checked: what must be read
        before the rest, such as the versions of a file that a newer release may have written."""
        s = self._by_name[name]
        if name in row or s.required:
            return s.decode(row.get(name))
        return s.default()


def _same(value: Any) -> Any:
    return value
