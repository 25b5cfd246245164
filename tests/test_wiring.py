"""Settings are consumed in one place (``collector.wiring.wire``): every setting reaches a component, and no
component keeps a default of its own beside the setting's declaration."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import MISSING, fields

import pytest

from collector import logs
from collector.derive import ErrorClassifier
from collector.llamacloud.client import LlamaCloudClient
from collector.metrics import SnapshotCollector
from collector.selection import PollConfig
from collector.settings import Settings
from collector.sqlite_store import SqliteStore
from collector.wiring import (
    ClientConfig,
    EndpointsConfig,
    ExpositionConfig,
    KeySource,
    LogConfig,
    StoreConfig,
    Wiring,
    wire,
)
from tests.settings_values import non_default, paths, with_value

pytestmark = pytest.mark.tier("unit")

COMPONENTS: list[tuple[Callable[..., object], type]] = [
    (LlamaCloudClient, ClientConfig),
    (SnapshotCollector, ExpositionConfig),
    (SqliteStore, StoreConfig),
    (logs.configure, LogConfig),
]
"""Each component built from its configuration whole (``**arguments(config)``), and that configuration."""


def test_every_setting_reaches_a_component(tmp_path):
    settings, others = non_default(tmp_path)
    wired = wire(settings)
    assert set(others) == set(paths())
    unused = [path for path, values in others.items() if all(wire(with_value(settings, path, v)) == wired for v in values)]
    assert unused == [], (
        f"settings that reach no component: {', '.join(unused)}. wire() (collector/wiring.py) gives the same "
        "configuration whatever they hold: pass each on to the component that uses it"
    )


def test_no_component_keeps_a_default_of_its_own():
    for component, config in COMPONENTS:
        params = inspect.signature(component).parameters
        for f in fields(config):
            assert f.name in params, f"{component.__qualname__} takes no {f.name} ({config.__name__} has it)"
            default = params[f.name].default
            assert default is inspect.Parameter.empty, f"{component.__qualname__}({f.name}={default!r}): a default of its own"
    for config in (*(c for _, c in COMPONENTS), PollConfig, KeySource, EndpointsConfig, Wiring):
        for f in fields(config):
            assert f.default is MISSING and f.default_factory is MISSING, f"{config.__name__}.{f.name} has a default"
    # the one default kept: the classifier's rules are the very constant the declaration's default is made of
    assert [(n, p.pattern) for n, p in ErrorClassifier().rules] == list(wire(Settings()).rules)
