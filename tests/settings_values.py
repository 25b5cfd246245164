"""Settings where every field differs from its default, found from the declarations alone (types, bounds,
validators), so a new setting needs no edit here; and for each field another valid value to compare with.

A setting is a path: a top-level field (``interval``), or a field of a settings model (``buckets.turns``).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_core import PydanticUndefined

from collector.settings import Settings


def _kinds(annotation: Any) -> list[Any]:
    """The types an annotation allows, None aside."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def candidates(annotation: Any, default: Any, folder: Path) -> list[Any]:
    """Values of ``annotation`` that differ from ``default``, most ordinary first (validation picks)."""
    out: list[Any] = []
    for kind in _kinds(annotation):
        origin = typing.get_origin(kind)
        if kind is bool:
            out += [True, False]
        elif origin is Literal:
            out += list(typing.get_args(kind))
        elif kind in (int, float):
            base = default if isinstance(default, (int, float)) and not isinstance(default, bool) else 1
            out += [kind(base + 1), kind(base + 2), kind(base * 2), kind(base - 1), kind(1), kind(2)]
        elif kind is str:
            if isinstance(default, str) and default:
                out += [default + "x", *(default[:-1] + c for c in "123"), "x_" + default]
            out += ["value_1", "value_2", "https://value-1.test", "https://value-2.test"]  # plain text, or a URL
        elif kind is SecretStr:
            out += ["llx-value_1", "llx-value_2"]
        elif kind is Path:
            out += [folder / "one", folder / "two"]
        elif origin is tuple:
            (item, _) = typing.get_args(kind)
            first, second = candidates(item, None, folder)[:2]
            out += [(first,), (first, second), (second,)]
        elif isinstance(kind, type) and issubclass(kind, BaseModel):
            alternatives = {n: _alternatives(f.annotation, f.default, folder) for n, f in kind.model_fields.items()}
            for i in range(2):
                try:
                    out.append(kind(**{n: a[min(i, len(a) - 1)] for n, a in alternatives.items() if a}))
                except ValidationError:
                    pass
    return [v for v in out if v != default]


def _alternatives(annotation: Any, default: Any, folder: Path) -> list[Any]:
    return candidates(annotation, None if default is PydanticUndefined else default, folder)


def paths() -> Iterator[str]:
    """Every setting path: each field, and each field of a settings model (``buckets.turns``)."""
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from (f"{name}.{sub}" for sub in annotation.model_fields)
        else:
            yield name


def _get(values: dict[str, Any], path: str) -> Any:
    name, _, sub = path.partition(".")
    return getattr(values[name], sub) if sub else values[name]


def _set(values: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``values`` with ``path`` set; a settings model is built again, so that its checks run."""
    name, _, sub = path.partition(".")
    if sub:
        value = type(values[name])(**{**values[name].model_dump(), sub: value})
    return {**values, name: value}


def _declared(path: str) -> tuple[Any, Any]:
    name, _, sub = path.partition(".")
    field = Settings.model_fields[name]
    if sub:
        field = typing.cast(type[BaseModel], field.annotation).model_fields[sub]
    return field.annotation, field.default


def _valid(values: dict[str, Any]) -> Settings | None:
    try:
        return Settings(**values)
    except ValidationError:
        return None


def non_default(folder: Path) -> tuple[Settings, dict[str, list[Any]]]:
    """Settings where every path differs from its default, and for each path the other values (its default
    first) it can take with all the others kept. An AssertionError names a path with no such value."""
    values = {name: field.default for name, field in Settings.model_fields.items()}
    options: dict[str, list[Any]] = {}
    for path in paths():
        annotation, default = _declared(path)
        options[path] = candidates(annotation, default, folder)
        for value in options[path]:
            # the field is valid; a check across fields (shard < total_shards) is met once all are set
            try:
                changed = _set(values, path, value)
                Settings(**changed)
            except ValidationError as exc:
                if any(e["loc"] for e in exc.errors()):
                    continue
            values = changed
            break
        else:
            raise AssertionError(f"setting {path}: no non-default value found; add a case to tests/settings_values.py")
    settings = _valid(values)
    assert settings is not None, f"no valid settings with every field changed: {values}"
    others: dict[str, list[Any]] = {}
    for path in paths():
        _, default = _declared(path)
        mine = _get(values, path)
        others[path] = [v for v in [default, *options[path]] if v != mine and _valid(_try_set(values, path, v))]
        assert others[path], f"setting {path}: no second valid value to compare with"
    return settings, others


def _try_set(values: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    try:
        return _set(values, path, value)
    except ValidationError:
        return {"invalid": True}


def with_value(settings: Settings, path: str, value: Any) -> Settings:
    values = {name: getattr(settings, name) for name in Settings.model_fields}
    return Settings(**_set(values, path, value))
