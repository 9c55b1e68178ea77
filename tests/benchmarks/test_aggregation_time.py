"""The aggregation-time benchmark runs on tiny shapes and reports what it promises: every
projection timed for every method, the linear extrapolation, and a product check in which
the exact method matches the dense SVD's rank-r product."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "aggregation_time", ROOT / "benchmarks" / "aggregation_time.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_every_field(bench, tmp_path, capsys):
    out = tmp_path / "aggregation_time.json"
    returned = bench.main(["--tiny", "--layers", "2", "--threads", "1", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(returned))
    methods = ["exact", "dense_svd", "dense_svd_lowrank"]
    assert data["methods"] == methods
    assert data["shapes_out_in"] == {
        "q_proj": [64, 64],
        "k_proj": [16, 64],
        "v_proj": [16, 64],
        "o_proj": [64, 64],
        "gate_proj": [224, 64],
        "up_proj": [224, 64],
        "down_proj": [64, 224],
    }
    assert (data["sites"], data["rank"], data["layers_timed"]) == (10, 16, 2)
    for m in methods:
        per = data["seconds_by_projection"][m]
        assert set(per) == PROJECTIONS and all(t > 0 for t in per.values())
        assert math.isclose(data["seconds_timed_layers"][m], sum(per.values()))
        full = data["seconds_full_model_extrapolated"][m]
        assert math.isclose(full, 16 * data["seconds_timed_layers"][m])  # 32 / 2 layers
        assert data["ratio_over_exact"][m] > 0
    assert data["ratio_over_exact"]["exact"] == 1.0
    assert "x16" in data["extrapolation"]
    mem = data["memory_bytes_analytic"]["gate_proj"]
    assert (
        mem["dense_delta"] == 224 * 64 * 8 and mem["exact_core"] == 160 * 64 * 8
    )  # min(out, R) x min(in, R)
    assert set(data["check_layer0"]) == PROJECTIONS
    for errs in data["check_layer0"].values():
        assert errs["rel_err_exact_vs_dense_svd"] < 1e-5  # the same rank-r product
        assert abs(errs["excess_trunc_err_exact"]) < 1e-6
        # randomized SVD: approximate, never better than the optimum
        assert 0 <= errs["rel_err_dense_svd_lowrank_vs_dense_svd"] < 1
        assert -1e-9 < errs["excess_trunc_err_dense_svd_lowrank"] < 0.1
    printed = capsys.readouterr().out
    assert "extrapolated" in printed and "total" in printed and str(out) in printed


def test_options_change_the_problem(bench, tmp_path):
    out = tmp_path / "a.json"
    data = bench.main(
        ["--scale", "128", "--sites", "3", "--rank", "4", "--no-lowrank", "--out", str(out)]
    )
    assert data["methods"] == ["exact", "dense_svd"] and data["lowrank"] is None
    assert data["shapes_out_in"]["down_proj"] == [32, 112]
    assert data["memory_bytes_analytic"]["down_proj"]["exact_largest"] == 112 * 12 * 8
    assert data["check_layer0"]["q_proj"]["rel_err_exact_vs_dense_svd"] < 1e-5
    with pytest.raises(SystemExit):
        bench.main(["--layers", "0", "--out", str(out)])
