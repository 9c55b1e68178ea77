"""The federated BERT baseline's classification head: it travels with the adapter, its
labels mean the same at every site, and a label only one site trains keeps that site's
training through aggregation (the defect behind BERT federated's gap on MACCROBAT)."""

from __future__ import annotations

import pytest
import torch

from fedmedlora.config import aggregation_settings, parse_config
from fedmedlora.data.schema import load_schema
from fedmedlora.data.site import SiteSpec
from fedmedlora.data.sites import SiteData
from fedmedlora.federation.aggregation import head_rows_from_trainers, weighted_average
from fedmedlora.federation.aggregator import Aggregator, SiteUpdate
from fedmedlora.model.lora import LoraSettings
from fedmedlora.recipe.site_recipe import SiteRecipe, initial_adapter
from fedmedlora.task.tagging import LabelSet
from tests.fixtures import notes


def test_a_row_only_one_site_changed_keeps_that_sites_row():
    current = {"classifier.weight": torch.zeros(3, 2), "x.lora_A.weight": torch.zeros(2, 2)}
    big = {"classifier.weight": torch.tensor([[1.0, 1.0], [2.0, 2.0], [0.0, 0.0]]),
           "x.lora_A.weight": torch.ones(2, 2)}  # fmt: skip
    small = {"classifier.weight": torch.tensor([[3.0, 3.0], [0.0, 0.0], [5.0, 5.0]]),
             "x.lora_A.weight": torch.full((2, 2), 3.0)}  # fmt: skip
    weights = [0.9, 0.1]
    plain = weighted_average([big, small], weights)
    got = head_rows_from_trainers(current, [big, small], weights, plain)
    head = got["classifier.weight"]
    assert head[0].tolist() == pytest.approx([1.2, 1.2])  # both trained it: plain mean
    assert head[1].tolist() == [2.0, 2.0]  # only the big site: its row, not 0.9 x it
    assert head[2].tolist() == [5.0, 5.0]  # only the small site: not diluted to 0.5
    assert torch.equal(got["x.lora_A.weight"], plain["x.lora_A.weight"])  # LoRA untouched


@pytest.fixture(scope="module")
def recipe():
    raw = {
        "model": {"name": "minilm-l6", "task": "tagging"},
        "lora": {"rank": 4, "dropout": 0.0},
        "train": {"learning_rate": 1e-2, "batch_size": 4, "local_steps": 2, "warmup_steps": 0},
        "task": {"tagger_window_tokens": 64},
    }
    return parse_config(raw, "test").recipe()


def _head(state: dict) -> tuple[str, str]:
    keys = sorted(k for k in state if "classifier" in k)
    weight = next(k for k in keys if k.endswith("weight"))
    bias = next(k for k in keys if k.endswith("bias"))
    return weight, bias


@pytest.mark.slow
def test_the_head_is_federated_and_aggregated_per_label(recipe):
    schema = load_schema()
    labels = LabelSet.for_schema(schema)
    start = initial_adapter(recipe)
    weight, bias = _head(start)  # the head crosses the network with the adapter
    assert start[weight].shape[0] == len(labels)  # one label space for every site

    def trained(types: list[str], site: str) -> dict:
        spec = SiteSpec(name=site, entity_types=types)
        docs = [spec.restrict(d) for d in notes(8, site)]
        state, _ = SiteRecipe(recipe, SiteData(spec, docs, [])).train(dict(start), 1, 2)
        return state

    drugs = trained(["drug", "problem"], "a")  # the large site: drug and problem only
    doses = trained(["dosage", "problem"], "b")  # the small site: the only one with dosage
    row = labels.begin("dosage")
    # A site's masked labels get no gradient: their rows come back bit-for-bit.
    assert torch.equal(drugs[weight][row], start[weight][row])
    assert not torch.equal(doses[weight][row], start[weight][row])

    agg = Aggregator(aggregation_settings(), LoraSettings(rank=4), start, max_site_weight=1.0)
    updates = [SiteUpdate("a", drugs, 90), SiteUpdate("b", doses, 10)]
    new = agg.aggregate(1, start, updates)
    # dosage: site b's row in full (a plain average would keep a tenth of its update).
    assert torch.allclose(new[weight][row], doses[weight][row])
    assert torch.allclose(new[bias][row], doses[bias][row])
    drug = labels.begin("drug")
    assert torch.allclose(new[weight][drug], drugs[weight][drug])
    both = labels.begin("problem")
    mean = 0.9 * drugs[weight][both] + 0.1 * doses[weight][both]
    assert torch.allclose(new[weight][both], mean, atol=1e-6)
