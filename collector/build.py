"""What this build is: its version (one source, the package metadata from ``pyproject.toml``) and the
source revision it was built from (written into the package by the image build, ``unknown`` otherwise)."""

from __future__ import annotations

import re
from importlib import metadata, resources

DISTRIBUTION = "llamacloud-collector"
REVISION_FILE = "REVISION"
"""``docker build --build-arg REVISION=<commit>`` writes it next to this module before installing."""


def _version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


def _revision() -> str:
    try:
        text = resources.files("collector").joinpath(REVISION_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return "unknown"
    return text if re.fullmatch(r"[0-9a-f]{7,40}", text) else "unknown"


VERSION = _version()
REVISION = _revision()
