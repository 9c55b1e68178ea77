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


@pytest.fixture(scope="session")
def kbit_cpu() -> None:
    """Skips, saying why, where bitsandbytes cannot quantize on this CPU; checked rather
    than assumed, since its CPU backend depends on the installed version."""
    import torch

    try:
        from bitsandbytes.functional import dequantize_4bit, quantize_4bit

        q, state = quantize_4bit(torch.randn(64, 64), quant_type="nf4")
        dequantize_4bit(q, state)
    except ImportError as exc:
        reason = f"bitsandbytes is not installed ({exc}); pip install 'fedmedlora[quant]'"
    except Exception as exc:  # any failure means: no CPU backend here
        reason = f"bitsandbytes has no working CPU nf4 backend here: {exc}"
    else:
        return
    print(f"SKIPPED k-bit CPU test: {reason}")
    pytest.skip(reason)
