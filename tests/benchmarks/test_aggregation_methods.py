"""The aggregation-methods benchmark runs end to end (tiny model, one round, the
corrupted-site setting) and reports each run (every method's Flower path is tested in
tests/federation/test_methods_simulation.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


@pytest.mark.slow
def test_methods_run_with_a_corrupted_site(tmp_path):
    import aggregation_methods

    out = tmp_path / "agg"
    aggregation_methods.main(
        [
            "--out", str(out), "--model", "tiny-random", "--rounds", "1",
            "--local-steps", "1", "--train-docs", "4", "--test-docs", "1",
            "--server-docs", "1", "--methods", "fedmedlora", "fedmedlora+server",
            "--settings", "corrupted",
        ]
    )  # fmt: skip
    data = json.loads((out / "results.json").read_text())
    assert set(data["runs"]) == {"corrupted"}  # the clean setting runs the same code
    runs = data["runs"]["corrupted"]
    assert set(runs) == {"fedmedlora", "fedmedlora+server"}
    for method, run in runs.items():
        assert 0 <= run["micro"]["entity_strict_f1"] <= 1, method
        assert sum(run["weights"]["1"].values()) == pytest.approx(1.0)
    weights = data["runs"]["corrupted"]["fedmedlora+server"]["weights"]["1"]
    sizes = data["runs"]["corrupted"]["fedmedlora"]["weights"]["1"]
    assert weights != pytest.approx(sizes)  # loss-based, not size-based
    report = (out / "report.md").read_text()
    assert "## corrupted" in report and "- fedmedlora+server: " in report


@pytest.mark.parametrize("real", [False, True])
def test_exact_ranks_gives_each_site_its_own_rank_and_fedsa_is_a_method(tmp_path, real):
    import aggregation_methods

    data = Path(__file__).resolve().parents[3] / "shared/data"
    if real and not data.is_dir():
        pytest.skip("../shared/data is not beside the project")
    args = ["--model", "tiny-random"] + (["--real", str(data)] if real else [])
    ns = aggregation_methods.parse_args(args)
    ranked = aggregation_methods.config_for(ns, "exact-ranks", 0.4, tmp_path)
    assert ranked.federation.aggregation.method == "exact"
    assert sorted(ranked.data.site_ranks().values()) == [4, 8, 16]
    plain = aggregation_methods.config_for(ns, "exact", 0.4, tmp_path)
    assert plain.data.site_ranks() == {}
    assert "fedsa" in aggregation_methods.METHODS
    assert (
        aggregation_methods.config_for(ns, "fedsa", 0.0, tmp_path).federation.aggregation.method
        == "fedsa"
    )


def test_resume_keeps_the_measured_runs_and_runs_only_the_rest(tmp_path, monkeypatch):
    import aggregation_methods

    ran = []

    def fake_simulate(config, out):
        ran.append(config.name)
        f1 = {"entity_strict_f1": 0.5, "entity_lenient_f1": 0.6}
        return {
            "final": {"micro": f1, "sites": {"a": f1}},
            "rounds": [{"round": 1, "train": {"a": {"aggregation-weight": 1.0}}}],
            "run": {"seconds": 1.0},
            "communication": {"adapter_bytes_per_round": 10},
        }

    monkeypatch.setattr(aggregation_methods, "simulate", fake_simulate)
    common = ["--out", str(tmp_path), "--model", "tiny-random", "--settings", "corrupted"]
    aggregation_methods.main([*common, "--methods", "fedmedlora", "fedsa"])
    assert ran == ["fedmedlora-corrupt", "fedsa-corrupt"]
    data = aggregation_methods.main(
        [*common, "clean", "--methods", "fedmedlora", "fedmedlora+", "--resume"]
    )
    assert ran[2:] == ["fedmedlora+-corrupt", "fedmedlora-clean", "fedmedlora+-clean"]
    assert set(data["runs"]["corrupted"]) == {"fedmedlora", "fedmedlora+", "fedsa"}
    report = (tmp_path / "report.md").read_text()
    assert report.index("| fedmedlora |") < report.index("| fedmedlora+ |")
    assert report.index("| fedmedlora+ |") < report.index("| fedsa |")
    with pytest.raises(SystemExit, match="rounds"):  # another budget: nothing mixed
        aggregation_methods.main([*common, "--rounds", "5", "--resume"])
