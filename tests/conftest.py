"""Shared fixtures. Real corpora live beside the project in ../shared/data (never in the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEDMEDLORA_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"public corpora not found at {SHARED_DATA} (set FEDMEDLORA_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def schema():
    from fedmedlora.data.schema import load_schema

    return load_schema("clinical")
