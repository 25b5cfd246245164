"""Checks on the files the collector writes, shared by the settings (at startup) and the store (at open)."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def state_path_problem(path: Path) -> str | None:
    """Why ``path`` cannot be the state file: it must be a regular file, or absent in a directory."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None if path.parent.is_dir() else f"directory {path.parent} does not exist"
    except OSError as exc:
        return f"cannot inspect {path}: {exc.strerror}"
    if stat.S_ISLNK(mode):
        return f"{path} is a symbolic link; give the real file's path"
    if stat.S_ISDIR(mode):
        return f"{path} is a directory; give a file path inside it, e.g. {path / 'state.db'}"
    if not stat.S_ISREG(mode):
        return f"{path} is not a regular file"
    return None
