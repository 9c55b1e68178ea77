"""Where converted and built models are cached (FEDMEDLORA_HOME, default ~/.cache/fedmedlora)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_home() -> Path:
    return Path(os.environ.get("FEDMEDLORA_HOME", Path.home() / ".cache" / "fedmedlora"))


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Build a folder at most once, even with several processes racing (Ray actors):
    each builds into its own temporary folder and the first rename wins."""
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        build(tmp)
        (tmp / ".complete").touch()
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / ".complete").exists():
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
