"""A site's local recipe under the aggregation methods' site-side options: held-out
validation documents (Fed-MedLoRA+), frozen A (FFA-LoRA), the proximal term (FedProx)."""

from __future__ import annotations

import math

import torch

from fedmedlora.data.schema import load_schema
from fedmedlora.data.site import SiteSpec
from fedmedlora.data.sites import SiteData
from fedmedlora.model.lora import frozen_parameter
from fedmedlora.recipe.settings import Recipe
from fedmedlora.recipe.site_recipe import SiteRecipe, initial_adapter
from tests.fixtures import notes


def _recipe(**train) -> Recipe:
    return Recipe.model_validate(
        {
            "model": {"name": "tiny-random"},
            "lora": {"dropout": 0.0},
            "train": {"local_steps": 3, "batch_size": 4, "learning_rate": 0.01, **train},
        }
    )


def _site(recipe: Recipe) -> SiteRecipe:
    spec = SiteSpec.full("a", load_schema())
    docs = notes(12, "a")
    return SiteRecipe(recipe, SiteData(spec, docs[:10], docs[10:]))


def _distance(a: dict, b: dict) -> float:
    return math.sqrt(sum(float((a[k] - b[k]).square().sum()) for k in a))


def test_validation_documents_are_held_out_of_training_and_scored():
    site = _site(_recipe(validation_fraction=0.2))
    assert len(site.validation.examples) > 0
    all_docs = _site(_recipe())
    assert len(all_docs.examples.examples) == len(site.examples.examples) + len(
        site.validation.examples
    )
    again = _site(_recipe(validation_fraction=0.2))
    assert [e.prompt_ids for e in again.validation.examples] == [
        e.prompt_ids for e in site.validation.examples
    ]
    loss = site.validation_loss(initial_adapter(site.recipe))
    assert math.isfinite(loss) and loss > 0
    assert all_docs.validation.examples == []


def test_validation_is_a_seeded_sample_of_at_most_max_examples_windows():
    full = _site(_recipe(validation_fraction=0.5))
    n = len(full.validation.examples)
    assert n > 3
    capped = _site(_recipe(validation_fraction=0.5, validation_max_examples=3))
    ids = [e.prompt_ids for e in capped.validation.examples]
    assert len(ids) == 3
    pool = [e.prompt_ids for e in full.validation.examples]
    assert all(i in pool for i in ids)  # drawn from the held-out windows, in their order
    assert sorted(pool.index(i) for i in ids) == [pool.index(i) for i in ids]
    again = _site(_recipe(validation_fraction=0.5, validation_max_examples=3))
    assert [e.prompt_ids for e in again.validation.examples] == ids  # seeded
    # the cap never moves documents between training and validation
    assert len(capped.examples.examples) == len(full.examples.examples)


def test_ffa_freeze_trains_b_only():
    site = _site(_recipe())
    start = initial_adapter(site.recipe)
    state, _ = site.train(start, 1, 3, freeze=frozen_parameter)
    a_keys = [k for k in start if ".lora_A." in k]
    b_keys = [k for k in start if ".lora_B." in k]
    assert a_keys and all(torch.equal(state[k], start[k]) for k in a_keys)
    assert any(not torch.equal(state[k], start[k]) for k in b_keys)
    # and the model trains A again afterwards: freezing is per call
    state2, _ = site.train(start, 1, 3)
    assert any(not torch.equal(state2[k], start[k]) for k in a_keys)


def test_proximal_term_keeps_the_site_near_the_global_adapter():
    free_site, prox_site = _site(_recipe()), _site(_recipe(proximal_mu=50.0))
    start = {
        k: v + 0.05 * torch.randn_like(v) for k, v in initial_adapter(free_site.recipe).items()
    }
    free, _ = free_site.train(start, 1, 3)
    prox, prox_stats = prox_site.train(start, 1, 3)
    assert _distance(prox, start) < 0.8 * _distance(free, start)
    assert all(math.isfinite(x) for x in prox_stats.losses)


def test_sites_served_by_one_process_share_one_base_model_and_swap_adapters(monkeypatch):
    from fedmedlora.recipe import site_recipe as recipes

    loads = []
    real = recipes.load_causal_lm
    monkeypatch.setattr(recipes, "_MODELS", {})
    monkeypatch.setattr(recipes, "load_causal_lm", lambda *a, **k: loads.append(a) or real(*a, **k))
    recipe = _recipe(local_steps=1)
    schema = load_schema()
    sites = []
    for name in ("a", "b", "c"):
        docs = notes(6, name)
        sites.append(SiteRecipe(recipe, SiteData(SiteSpec.full(name, schema), docs, [])))
    state = initial_adapter(recipe)
    updates = [site.train(state, 1, 1)[0] for site in sites]
    assert len(loads) == 1 and len({id(site.lm.model) for site in sites}) == 1
    # each site starts from the received adapter, not from the previous site's training:
    # site c's update is the same when it is served alone by a fresh process
    monkeypatch.setattr(recipes, "_MODELS", {})
    docs = notes(6, "c")
    alone = SiteRecipe(recipe, SiteData(SiteSpec.full("c", schema), docs, [])).train(state, 1, 1)
    assert len(loads) == 2
    assert all(torch.equal(updates[2][k], alone[0][k]) for k in state)
    assert _distance(updates[0], updates[2]) > 0
