"""The factor orientation and scaling of `exact` and `hetero_rank`, checked on real PEFT
modules: nn.Linear (Llama) and GPT-2's Conv1D (fan_in_fan_out, merged delta transposed).

Each "site" is a PEFT model with its own rank, alpha (and rsLoRA or not) and random
adapter; the aggregate loaded into a PEFT model of the target rank and merged must equal
base + Σ p_k (merged_k − base), weight by weight.
"""

from __future__ import annotations

import copy

import pytest
import torch

from fedmedlora.federation.aggregation import weighted_average
from fedmedlora.federation.methods.exact import exact_aggregate
from fedmedlora.federation.methods.hetero_rank import redistribute
from fedmedlora.federation.methods.lora_pairs import lora_scaling, split_lora

from .helpers import tiny_llama_config

# PEFT warns that a 1-D lora_B.bias looks like an unsharded ZeRO-3 tensor; it is not.
pytestmark = pytest.mark.filterwarnings("ignore:.*LoRA tensor.*invalid shape")

# (rank, alpha, rslora) of each site, and their aggregation weights
SITES = [(2, 4.0, False), (3, 8.0, False), (4, 6.0, True)]
WEIGHTS = [30.0, 10.0, 60.0]


def _llama():
    from transformers import LlamaForTokenClassification

    config = tiny_llama_config(num_labels=3)
    return LlamaForTokenClassification(config), {
        "target_modules": "all-linear",
        "exclude_modules": ["score"],  # the head is trained in full (modules_to_save)
        "task_type": "TOKEN_CLS",
    }


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2, n_positions=16)
    return GPT2LMHeadModel(config), {
        "target_modules": ["c_attn", "c_proj", "c_fc"],
        "fan_in_fan_out": True,
        "lora_bias": True,  # Conv1D has a bias; PEFT adds s·lora_B.bias to it
    }


def _peft(base, options, rank: int, alpha: float, rslora: bool = False):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, use_rslora=rslora, lora_dropout=0.0, **options)
    return get_peft_model(copy.deepcopy(base), config)


def _randomise(model, g: torch.Generator) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    state = {
        k: torch.randn(v.shape, generator=g) * 0.3
        for k, v in get_peft_model_state_dict(model).items()
    }
    set_peft_model_state_dict(model, state)
    return state


def _merged(model) -> dict[str, torch.Tensor]:
    merged = copy.deepcopy(model).merge_and_unload()
    return {k: v.detach().to(torch.float64) for k, v in merged.state_dict().items()}


def _load(model, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state)
    assert not result.unexpected_keys


def _scaling_of(model) -> set[float]:
    from peft.tuners.lora import LoraLayer

    return {m.scaling["default"] for m in model.modules() if isinstance(m, LoraLayer)}


@pytest.fixture(scope="module", params=["llama-linear", "gpt2-conv1d"])
def sites(request):
    torch.manual_seed(0)
    base, options = _llama() if request.param == "llama-linear" else _gpt2()
    g = torch.Generator().manual_seed(1)
    states, merged, scalings = [], [], []
    for rank, alpha, rslora in SITES:
        model = _peft(base, options, rank, alpha, rslora)
        assert _scaling_of(model) == {lora_scaling(alpha, rank, rslora=rslora)}
        scalings.append(lora_scaling(alpha, rank, rslora=rslora))
        states.append(_randomise(model, g))
        merged.append(_merged(model))
    base_sd = {k: v.detach().to(torch.float64) for k, v in base.state_dict().items()}
    p = [w / sum(WEIGHTS) for w in WEIGHTS]
    expected = {
        k: v + sum(pk * (m[k] - v) for pk, m in zip(p, merged, strict=True))
        for k, v in base_sd.items()
    }
    return base, options, states, scalings, expected


def _max_error(merged: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    assert merged.keys() == expected.keys()
    return max(float((merged[k] - expected[k]).abs().max()) for k in expected)


def test_sites_have_lora_pairs_and_the_head(sites):
    _, options, states, _, _ = sites
    split = split_lora(states[0])
    assert split.pairs
    if options.get("task_type") == "TOKEN_CLS":
        assert "base_model.model.score.weight" in split.others
    else:
        assert all(k.endswith(".lora_B.bias") for k in split.others) and split.others


def test_merged_exact_aggregate_is_the_average_of_merged_sites(sites):
    base, options, states, scalings, expected = sites
    full_rank, alpha = sum(r for r, _, _ in SITES), 5.0
    target = _peft(base, options, full_rank, alpha)
    aggregate = exact_aggregate(
        states, WEIGHTS, scalings=scalings, target_scaling=lora_scaling(alpha, full_rank)
    )
    _load(target, aggregate)
    assert _max_error(_merged(target), expected) < 1e-5
    # The check can fail: averaging the factors (at one shared rank) is not the average.
    same_rank = [_randomise(_peft(base, options, 3, 6.0), torch.Generator()) for _ in range(3)]
    _load(target := _peft(base, options, 3, 6.0), weighted_average(same_rank, WEIGHTS))
    assert _max_error(_merged(target), expected) > 1e-2


def test_redistributed_global_merges_to_the_same_model(sites):
    base, options, states, scalings, expected = sites
    full_rank = sum(r for r, _, _ in SITES)
    global_scaling = lora_scaling(5.0, full_rank)
    aggregate = exact_aggregate(states, WEIGHTS, scalings=scalings, target_scaling=global_scaling)
    rank, alpha = full_rank + 2, 3.0  # a larger rank and another alpha: still exact
    site = _peft(base, options, rank, alpha, rslora=True)
    local = redistribute(
        aggregate, rank, lora_scaling(alpha, rank, rslora=True), global_scaling=global_scaling
    )
    _load(site, local)
    assert _max_error(_merged(site), expected) < 1e-5
