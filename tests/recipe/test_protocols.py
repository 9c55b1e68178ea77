import torch

from fedmedlora.data.schema import load_schema
from fedmedlora.data.site import SiteSpec
from fedmedlora.data.sites import SiteData
from fedmedlora.model.lora import save_adapter
from fedmedlora.recipe.protocols import (
    EvalSet,
    evaluate_state,
    load_peft_adapter,
    sample_documents,
    steps_for_epochs,
    train_local,
)
from fedmedlora.recipe.settings import Recipe
from fedmedlora.recipe.site_recipe import build_site_examples, initial_adapter, loaded_model
from tests.fixtures import notes

RECIPE = Recipe.model_validate(
    {
        "model": {"name": "tiny-random"},
        "train": {"local_steps": 3, "batch_size": 4},
        "generation": {"max_new_tokens": 16},
    }
)


def _site(name, offset, types=None):
    schema = load_schema()
    spec = SiteSpec(name=name, entity_types=types) if types else SiteSpec.full(name, schema)
    docs = [spec.restrict(d) for d in notes(6, name, offset)]
    return SiteData(spec, docs[:4], docs[4:])


def test_single_site_and_pooled_training_start_from_the_base_adapter():
    a, b = _site("a", 0), _site("b", 30, ["problem", "drug"])
    single, s1 = train_local(RECIPE, [a], steps=3)
    pooled, s2 = train_local(RECIPE, [a, b], steps=3)
    base = initial_adapter(RECIPE)
    assert s1.steps == s2.steps == 3
    assert any(not torch.equal(single[k], base[k]) for k in base)
    assert any(not torch.equal(single[k], pooled[k]) for k in base)
    # a warm start changes the result: training continues from the given adapter
    warm, _ = train_local(RECIPE, [a], steps=3, start=pooled)
    assert any(not torch.equal(warm[k], single[k]) for k in base)


def test_epochs_raise_the_steps_so_every_example_is_seen():
    spec = SiteSpec.full("a", load_schema())
    a = SiteData(spec, [spec.restrict(d) for d in notes(13, "a", 0)], [])  # > 2 batches of 4
    _, fixed = train_local(RECIPE, [a], steps=2)
    _, once = train_local(RECIPE, [a], steps=2, epochs=1.0)
    assert fixed.steps == 2
    lm, schema = loaded_model(RECIPE), load_schema()
    windows = len(build_site_examples(RECIPE, lm, a.train, a.spec, schema).examples)
    assert windows >= 13 and once.steps == -(-windows // RECIPE.train.batch_size)
    _, more = train_local(RECIPE, [a], steps=50, epochs=1.0)  # `steps` stays the floor
    assert more.steps == 50
    assert steps_for_epochs(9, 4, 1.0) == 3 and steps_for_epochs(9, 4, 2.0) == 5
    assert steps_for_epochs(9, 4, 0.0) == 0


def test_evaluate_state_scores_every_set_on_its_types():
    a = _site("a", 0)
    sets = [
        EvalSet("in", "in-domain", a.test, a.spec),
        EvalSet("ext", "external", a.test, SiteSpec(name="ext", entity_types=["problem"])),
    ]
    scores = evaluate_state(RECIPE, initial_adapter(RECIPE), sets, log=lambda _: None)
    assert set(scores) == {"in", "ext"}
    gold_problems = sum(e.type == "problem" for d in a.test for e in d.entities)
    ext = scores["ext"].micro("entity", "strict")
    assert ext.tp + ext.fn == gold_problems


def test_sampled_documents_and_saved_adapters_round_trip(tmp_path):
    docs = notes(10)
    assert sample_documents(docs, 3, seed=0) == sample_documents(docs, 3, seed=0)
    assert len(sample_documents(docs, 50, seed=0)) == 10
    state = {k: v + 0.01 for k, v in initial_adapter(RECIPE).items()}
    save_adapter(loaded_model(RECIPE).model, state, tmp_path / "ad")
    back = load_peft_adapter(tmp_path / "ad")
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_training_from_the_base_ignores_whatever_adapter_was_loaded_before():
    """Baselines start from the seeded base adapter even after the model served another
    adapter in this process (the shared model is changed in place)."""
    a = _site("a", 0)
    torch.manual_seed(0)  # LoRA dropout draws from the global generator
    first, _ = train_local(RECIPE, [a], steps=2, seed=5)
    base = initial_adapter(RECIPE)
    assert all(not torch.count_nonzero(v) for k, v in base.items() if "lora_B" in k)
    assert any(not torch.equal(first[k], base[k]) for k in base)  # the model now holds `first`
    torch.manual_seed(0)
    again, _ = train_local(RECIPE, [a], steps=2, seed=5)
    assert all(torch.allclose(again[k], first[k]) for k in first)


def test_personalization_tunes_b_first_then_every_adapter_weight():
    from fedmedlora.recipe.protocols import personalize
    from fedmedlora.recipe.site_recipe import SiteRecipe

    site = SiteRecipe(RECIPE, _site("p", 0))
    start = {k: v + 0.01 for k, v in initial_adapter(RECIPE).items()}
    a_keys = [k for k in start if ".lora_A." in k]
    b_only, stats = personalize(site, start, head_steps=2, full_steps=0)
    assert [s.steps for s in stats] == [2]
    assert all(torch.equal(b_only[k], start[k]) for k in a_keys)
    assert any(not torch.equal(b_only[k], start[k]) for k in start if ".lora_B." in k)
    both, stats = personalize(site, start, head_steps=2, full_steps=2)
    assert [s.steps for s in stats] == [2, 2]
    assert any(not torch.equal(both[k], start[k]) for k in a_keys)


def test_a_fedex_adapter_loads_only_onto_a_model_that_takes_its_residual(tmp_path):
    """Its tensors alone are not the federated model: without a model to offset,
    `load_peft_adapter` refuses it instead of returning a silently different model."""
    import pytest

    from fedmedlora.model.loading import load_causal_lm
    from fedmedlora.model.lora import LoraSettings, adapter_state, add_lora

    model = add_lora(load_causal_lm("tiny-random"), LoraSettings(rank=2))
    name = "base_model.model.model.layers.1.self_attn.o_proj.base_layer.weight"
    weight = dict(model.named_parameters())[name]
    pretrained = weight.detach().clone()
    offset = torch.full_like(weight, -0.5)
    save_adapter(model, adapter_state(model), tmp_path / "fedex", base_residual={name: offset})
    with pytest.raises(ValueError, match="FedEx-LoRA adapter"):
        load_peft_adapter(tmp_path / "fedex")
    state = load_peft_adapter(tmp_path / "fedex", model=model)
    assert state.keys() == adapter_state(model).keys()
    assert torch.equal(weight, pretrained + offset)
