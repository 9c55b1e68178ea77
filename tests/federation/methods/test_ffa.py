import pytest
import torch

from fedmedlora.federation.methods.exact import exact_aggregate
from fedmedlora.federation.methods.ffa import b_only, ffa_aggregate, with_frozen_a
from fedmedlora.federation.methods.lora_pairs import is_lora_a, split_lora
from fedmedlora.model.lora import frozen_parameter

from .helpers import PREFIX, adapter, close, dense, gen, tiny_llama_config

MODULES = ("q_proj", "v_proj")


def _a_only(state):
    return {k: v for k, v in state.items() if is_lora_a(k)}


def _sites(seed: int, k: int = 3):
    g = gen(seed)
    init = adapter(g, 4)  # the shared seeded initialisation: every site has this A
    return init, [adapter(g, 4, shared_a=init) for _ in range(k)]


def test_b_only_sends_only_b_and_non_lora_tensors():
    _, (site, *_) = _sites(0)
    sent = b_only(site)
    split = split_lora(site)
    assert set(sent) == set(site) - set(split.a_keys)
    assert set(split.b_keys) <= set(sent) and "base_model.model.score.weight" in sent
    assert not any(is_lora_a(k) for k in sent)


def test_with_frozen_a_rebuilds_the_full_state_in_peft_order():
    init, (site, *_) = _sites(1)
    for frozen in (init, _a_only(init)):
        full = with_frozen_a(b_only(site), frozen)
        assert list(full) == list(site)
        assert all(torch.equal(full[k], site[k]) for k in site)


def test_aggregate_of_b_is_the_exact_average_of_products():
    for seed in range(10):
        init, sites = _sites(seed)
        weights = (torch.rand(3, generator=gen(seed + 100)) + 0.1).tolist()
        p = [w / sum(weights) for w in weights]
        full = with_frozen_a(ffa_aggregate([b_only(s) for s in sites], weights), init)
        exact = exact_aggregate(sites, weights, scalings=[2.0] * 3, target_scaling=2.0)
        for m in MODULES:
            a_key, b_key = f"{PREFIX}.{m}.lora_A.weight", f"{PREFIX}.{m}.lora_B.weight"
            average = sum(pk * dense(s[b_key], s[a_key]) for pk, s in zip(p, sites, strict=True))
            assert close(dense(full[b_key], full[a_key]), average), seed
            assert close(dense(exact[b_key], exact[a_key]), dense(full[b_key], full[a_key]))
            assert torch.equal(full[a_key], init[a_key])  # A never moves


def test_averaging_b_is_not_exact_without_a_shared_a():
    g = gen(3)
    sites = [adapter(g, 4) for _ in range(2)]  # each site its own A: the FFA premise fails
    full = with_frozen_a(ffa_aggregate([b_only(s) for s in sites], [1, 1]), sites[0])
    a_key, b_key = f"{PREFIX}.q_proj.lora_A.weight", f"{PREFIX}.q_proj.lora_B.weight"
    average = sum(0.5 * dense(s[b_key], s[a_key]) for s in sites)
    assert not close(dense(full[b_key], full[a_key]), average, rtol=1e-2)


def test_refuses_a_factors_where_only_b_belongs():
    init, sites = _sites(4)
    with pytest.raises(ValueError, match="sends only B"):
        ffa_aggregate([b_only(sites[0]), sites[1]], [1, 1])
    with pytest.raises(ValueError, match="must not contain lora_A"):
        with_frozen_a(sites[0], init)


def test_with_frozen_a_checks_pairs_and_ranks():
    init, (site, *_) = _sites(5)
    missing = {k: v for k, v in _a_only(init).items() if "v_proj" not in k}
    with pytest.raises(ValueError, match="no matching lora_A"):
        with_frozen_a(b_only(site), missing)
    extra = {**_a_only(init), f"{PREFIX}.k_proj.lora_A.weight": torch.zeros(4, 5)}
    with pytest.raises(ValueError, match="no matching lora_B"):
        with_frozen_a(b_only(site), extra)
    wrong_rank = {**_a_only(init), f"{PREFIX}.q_proj.lora_A.weight": torch.zeros(2, 5)}
    with pytest.raises(ValueError, match="same r"):
        with_frozen_a(b_only(site), wrong_rank)


@pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers`")
def test_frozen_parameter_picks_exactly_the_a_factors_of_a_peft_model():
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import LlamaForCausalLM

    config = tiny_llama_config()
    targets = ["q_proj", "v_proj", "embed_tokens"]
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules=targets))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = [n for n in trainable if frozen_parameter(n)]
    a_keys = split_lora(get_peft_model_state_dict(model)).a_keys
    assert len(frozen) == len(a_keys) == 3
    assert all(".lora_A." in n or ".lora_embedding_A." in n for n in frozen)
    assert all(frozen_parameter(k) for k in a_keys)
    assert not any(frozen_parameter(n) for n in trainable if n not in frozen)
