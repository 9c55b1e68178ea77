"""The personalization benchmark rebuilds an aggregation run's sites from its results,
personalizes its global adapter at every site both ways with one step budget, and
reports per site and micro."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def _federation(tmp_path: Path) -> Path:
    """An aggregation_methods output folder as a finished tiny run leaves it."""
    import aggregation_methods
    import personalization
    from fedmedlora.model.lora import save_adapter
    from fedmedlora.recipe.site_setup import site_recipe
    from resuming import saved_arguments

    root = tmp_path / "agg"
    ns = aggregation_methods.parse_args(
        ["--out", str(root), "--model", "tiny-random", "--train-docs", "3", "--test-docs", "1"]
    )
    root.mkdir()
    (root / "results.json").write_text(json.dumps({"args": saved_arguments(ns), "runs": {}}))
    config = personalization.federation_config(root, "clean", "fedmedlora")
    local = site_recipe(config.recipe(), config.data.site_names[0])
    state = {k: v + 0.01 for k, v in local.lm.initial.items()}
    save_adapter(local.lm.model, state, root / "clean/fedmedlora/adapter")
    return root


def test_every_site_is_scored_federated_then_personalized_both_ways(tmp_path):
    import personalization

    root, out = _federation(tmp_path), tmp_path / "pers"
    data = personalization.main(
        ["--federation", str(root), "--out", str(out), "--head-steps", "1", "--full-steps", "1"]
    )
    assert list(data["sites"]) == ["riverside", "northgate", "lakeside"]
    for name, site in data["sites"].items():
        assert list(site) == ["federated", "lp-ft", "ft"], name
        for label, summary in site.items():
            assert 0 <= summary["entity_strict_f1"] <= summary["entity_lenient_f1"] <= 1, label
        assert len(site["lp-ft"]["train_loss"]) == 2  # B only, then everything
        assert len(site["ft"]["train_loss"]) == 1
        assert all(torch.isfinite(torch.tensor(site["ft"]["train_loss"])))
    assert set(data["micro"]) == {"federated", "lp-ft", "ft"}
    saved = json.loads((out / "results.json").read_text())
    assert saved["sites"].keys() == data["sites"].keys()
    report = (out / "report.md").read_text()
    assert "| micro | lp-ft |" in report and "| lakeside | federated |" in report


def test_both_variants_get_the_same_budget_and_a_missing_adapter_is_named(tmp_path):
    import personalization

    assert personalization.steps_for("lp-ft", 3, 5) == (3, 5)
    assert personalization.steps_for("ft", 3, 5) == (0, 8)
    root = tmp_path / "agg"
    root.mkdir()
    with pytest.raises(SystemExit, match=r"fedsa/adapter: no global adapter"):
        personalization.main(["--federation", str(root), "--method", "fedsa"])
    with pytest.raises(SystemExit):
        personalization.parse_args(["--head-steps", "0", "--full-steps", "0"])
