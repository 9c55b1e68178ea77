"""extraction_speed's compute accounting: the waste and the floor it reports."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import extraction_speed  # noqa: E402
from fedmedlora.evaluation.inference import ExtractionStats  # noqa: E402


def test_the_floor_is_the_needed_columns_at_the_cheapest_rate():
    stats = ExtractionStats(
        generated_tokens=300, columns=1000, prompt_tokens=500, cheapest_column_seconds=0.002
    )
    out = extraction_speed.columns(stats)
    assert out["wasted_columns"] == 200  # 1000 computed, 500 + 300 needed
    assert out["columns_per_token"] == pytest.approx(1000 / 300, abs=1e-3)
    assert out["floor_seconds"] == pytest.approx(800 * 0.002)
    # greedy generate is one call: no per-pass rate, so no floor
    assert extraction_speed.columns(ExtractionStats(columns=10))["floor_seconds"] is None


def row(variant: str, seconds: float, floor: float | None) -> dict:
    return {
        "variant": variant,
        "seconds": seconds,
        "windows_per_second": 10 / seconds,
        "tokens_per_second": 1.0,
        "forward_passes_per_token": 1.0,
        "columns_per_token": 2.0,
        "floor_seconds": floor,
        "entity_strict_f1": 0.5,
        "entity_strict_f1_ci95": [0.4, 0.6],
        "entity_lenient_f1": 0.6,
        "entity_lenient_f1_ci95": [0.5, 0.7],
        "parse_issues": {},
    }


def test_the_ceiling_is_the_first_rows_seconds_over_each_floor():
    text = extraction_speed.table([row("greedy-batched", 30.0, None), row("c+s", 10.0, 7.5)])
    greedy, spec = text.splitlines()[2:]
    assert greedy.split(" | ")[6] == "-"
    assert spec.split(" | ")[2] == "3.0"  # measured: 30 s against 10 s
    assert spec.split(" | ")[6] == "4.0"  # at best: 30 s against a 7.5 s floor
