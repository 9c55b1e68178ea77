"""The clinical IE benchmark runs end to end (tiny budget, tiny LLM) and fills every cell."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_benchmark_fills_every_protocol_and_method(tmp_path, shared_data):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "clinical_ie.py"),
            "--data",
            str(shared_data),
            "--out",
            str(out),
            "--model",
            "tiny-random",
            "--rounds",
            "1",
            "--local-steps",
            "1",
            "--bert-steps",
            "1",
            "--eval-windows",
            "4",
            "--new-site-steps",
            "1",
            "--k",
            "0",
            "5",
            "--max-new-tokens",
            "24",  # a random model writes to the cap: keep generation short
            "--max-train-docs",
            "12",  # one step per site: building examples from every document is the cost
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    expected = {"zero-shot", "fedmedlora", "centralized", "bert-centralized", "bert-fed"}
    expected |= {
        f"{p}:{s}"
        for p in ("single-site", "bert-single-site")
        for s in ("maccrobat", "chia", "bc5cdr")
    }
    assert set(data["methods"]) == expected
    sets = {"maccrobat", "chia", "bc5cdr", "ncbi_test", "bc5cdr_test"}
    for method in data["methods"].values():
        assert set(method["scores"]) == sets
    assert set(data["new_site"]) == {"0", "5"}
    assert set(data["new_site"]["5"]) == {"base", "fedmedlora"}
    report = (out / "report.md").read_text()
    table_rows = [line for line in report.splitlines() if line.startswith("| ")]
    assert not [row for row in table_rows if "| - |" in row]
    for name in ("in_domain.png", "new_site.png", "config.yaml"):
        assert (out / name).is_file()
    assert (out / "fedmedlora" / "adapter" / "adapter_model.safetensors").is_file()
