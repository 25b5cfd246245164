"""The settings file's YAML loader (``--config``): imported only when a file is given, since PyYAML costs a
megabyte resident that a collector configured by flags and env never uses (issue 32)."""

from __future__ import annotations

from typing import Any

import yaml


class AliasRefused(yaml.composer.ComposerError):
    """An alias (``*name``, a ``<<`` merge of one) in the settings file."""


class UniqueKeyLoader(yaml.SafeLoader):
    """A YAML mapping with a key twice is refused: last-wins hides a typo. An alias is refused where
    the composer meets it: a settings file needs none, and a few hundred bytes of aliases nested a few deep
    stand for billions of values to every walk of the result (``settings._depth``, pydantic)."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
            raise AliasRefused(None, None, f"*{str(event.anchor)[:40]}", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in keys
            except TypeError:
                duplicate = False
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {str(key)[:40]!r}", key_node.start_mark)
            if isinstance(key, (str, int, float, bool)) or key is None:
                keys.add(key)
        return super().construct_mapping(node, deep=deep)
