"""Test tiers as markers, and the fixtures the tiers share.

Tiers (``pytest -m <tier>``):
- ``unit``: in-process, on loopback at most; the whole tier runs in about 2 minutes on 2 cores.
- ``model``: the hypothesis model of the counting core (in-process, but its own tier for its time).
- ``process``: starts the collector or the simulator as processes.
- ``tools``: needs a real external tool (Prometheus, promtool, Alertmanager, Helm, kubectl, actionlint,
  hadolint, openssl): ``.ci/run`` installs them.
- ``soak``: minutes of traffic.

Each test module declares its tiers itself, ``pytestmark = pytest.mark.tier("unit")``; a test that differs
from its module carries its own ``@pytest.mark.tier(...)``. A module without one fails collection, naming it.
"""

from __future__ import annotations

import subprocess

import pytest
import structlog

from tests.stack import Processes

TIERS = {
    "unit": "in-process, fast",
    "model": "the hypothesis model of the counting core (in-process; its own tier for its time)",
    "process": "starts the collector or simulator as processes",
    "tools": "needs Prometheus, promtool, Helm, kubectl, actionlint, hadolint or openssl",
    "soak": "minutes of traffic",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "tier(*names): the tiers of a test module (its pytestmark) or of one test")
    for name, meaning in TIERS.items():
        config.addinivalue_line("markers", f"{name}: {meaning}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test gets the tiers of its closest ``tier`` marker: its own (a test that starts a process in a
    module that otherwise does not), else its module's ``pytestmark``."""
    for item in items:
        declared = item.get_closest_marker("tier")
        where = item.nodeid.split("::", 1)[0]
        if declared is None or not declared.args:
            raise pytest.UsageError(f'{where} has no tier: add pytestmark = pytest.mark.tier("unit") (or another)')
        unknown = set(declared.args) - set(TIERS)
        if unknown:
            raise pytest.UsageError(f"{where}: unknown tier {sorted(unknown)[0]!r} (tiers: {', '.join(TIERS)})")
        for tier in declared.args:
            item.add_marker(tier)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """The unit tier is what mutation testing runs: a process started from it would run unmutated code."""
    if request.node.get_closest_marker("unit") is not None:

        def refuse(*args, **kwargs):
            raise AssertionError(f"{request.node.nodeid} starts a process: give it @pytest.mark.tier('process')")

        monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    yield


@pytest.fixture(autouse=True)
def _fresh_logging():
    """A test that configures structlog (to a buffer it then closes) leaves the next test the defaults."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def procs(tmp_path):
    """Processes started by a test, each logging to a file under ``tmp_path``, all stopped at its end."""
    processes = Processes(tmp_path)
    yield processes
    processes.stop_all()
