"""The lenient-matching benchmark runs on small sizes, checks old and new agree, and
writes what it prints."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_small_run_agrees_and_writes_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "lenient_matching", ROOT / "benchmarks" / "lenient_matching.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "lenient_matching.json"
    bench.main(["--sizes", "40", "300", "--old-max", "100", "--out", str(out)])
    data = json.loads(out.read_text())
    assert set(data["sizes"]) == {"40", "300"}
    small, large = data["sizes"]["40"], data["sizes"]["300"]
    assert "old_seconds" in small and "old_seconds" not in large  # --old-max respected
    assert 0 < small["lenient_tp"] <= small["entities_gold"]
    gold, pred = bench.documents(300, 0)
    assert bench.old_lenient_tp(gold.entities, pred.entities) == large["lenient_tp"]
    assert "wrote" in capsys.readouterr().out
