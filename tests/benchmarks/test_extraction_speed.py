"""extraction_speed's compute accounting: the waste and the floor it reports."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import extraction_speed  # noqa: E402
from fedmedlora.evaluation.decoding import DecodeStats  # noqa: E402


def test_the_floor_is_the_needed_columns_at_the_cheapest_rate():
    # passes costing 40 ms + 2 ms a column, the cheapest (400 columns) 2.1 ms a column
    passes = [(c, 0.040 + 0.002 * c) for c in (10, 50, 100, 400)]
    stats = DecodeStats(
        generated_tokens=300, columns=1000, prompt_tokens=500, passes=passes, model_calls=4
    )
    out = extraction_speed.columns(stats)
    assert out["wasted_columns"] == 200  # 1000 computed, 500 + 300 needed
    assert out["columns_per_token"] == pytest.approx(1000 / 300, abs=1e-3)
    assert out["pass_ms"] == pytest.approx(40) and out["column_ms"] == pytest.approx(2)
    assert out["split_seconds"] == {"per_pass": 0.16, "needed_columns": 1.6, "wasted_columns": 0.4}
    assert out["cheapest_column_ms"] == pytest.approx(2.1)
    assert out["floor_seconds"] == pytest.approx(800 * 0.0021)
    # greedy generate is timed as a whole: no passes, so no floor
    assert extraction_speed.columns(DecodeStats(columns=10))["floor_seconds"] is None


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


def test_repeats_combine_to_the_median_and_paired_ratios():
    base = [row("greedy-batched", s, None) for s in (30.0, 40.0, 20.0)]
    spec = [row("c+s", s, f) for s, f in ((10.0, 7.0), (8.0, 6.0), (10.0, 8.0))]
    for r in base + spec:
        r.update(windows=10, generated_tokens=100)
    out = extraction_speed.combined(spec, base)
    assert out["seconds"] == 10.0 and out["windows_per_second"] == 1.0
    assert out["x_each"] == [3.0, 5.0, 2.0]  # each repeat against its own baseline
    assert out["floor_seconds"] == 6.0
    text = extraction_speed.table([extraction_speed.combined(base, base), out])
    assert text.splitlines()[3].split(" | ")[2] == "3.0 (2.0-5.0)"
