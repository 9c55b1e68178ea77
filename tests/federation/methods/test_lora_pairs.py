import pytest
import torch

from fedmedlora.federation.methods.lora_pairs import (
    is_lora_a,
    is_lora_b,
    lora_ranks,
    lora_scaling,
    pair_rank,
    split_lora,
)

P = "base_model.model.model.layers.0"
KEYS = [
    f"{P}.self_attn.q_proj.lora_A.weight",
    f"{P}.self_attn.q_proj.lora_B.weight",
    f"{P}.self_attn.q_proj.lora_B.bias",
    "base_model.model.model.embed_tokens.lora_embedding_A",
    "base_model.model.model.embed_tokens.lora_embedding_B",
    "base_model.model.model.embed_tokens.base_layer.weight",
    f"{P}.mlp.up_proj.lora_B.weight",  # B before A: order of arrival must not matter
    f"{P}.mlp.up_proj.lora_A.weight",
    f"{P}.mlp.up_proj.lora_magnitude_vector",
    "base_model.model.score.weight",
]


def test_splits_pairs_and_others_in_order():
    split = split_lora(KEYS)
    assert split.pairs == {
        f"{P}.self_attn.q_proj": (KEYS[0], KEYS[1]),
        "base_model.model.model.embed_tokens": (KEYS[3], KEYS[4]),
        f"{P}.mlp.up_proj": (KEYS[7], KEYS[6]),
    }
    assert split.others == [KEYS[2], KEYS[5], KEYS[8], KEYS[9]]
    assert split.a_keys == [KEYS[0], KEYS[3], KEYS[7]]
    assert split.b_keys == [KEYS[1], KEYS[4], KEYS[6]]


def test_accepts_a_state_dict():
    state = {"m.lora_A.weight": torch.zeros(2, 3), "m.lora_B.weight": torch.zeros(4, 2)}
    assert split_lora(state).pairs == {"m": ("m.lora_A.weight", "m.lora_B.weight")}
    assert lora_ranks(state) == {"m": 2}


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (["m.lora_A.weight"], "no matching lora_B"),
        (["m.lora_B.weight", "x"], "no matching lora_A"),
        (["m.lora_A.default.weight", "m.lora_B.default.weight"], "unrecognised LoRA key"),
        (["m.lora_A.weight", "m.lora_embedding_A", "m.lora_B.weight"], "two LoRA A factors"),
        (["m.lora_A.weight", "m.lora_embedding_B"], "mixes factor kinds"),
    ],
)
def test_rejects_broken_pairs(keys, message):
    with pytest.raises(ValueError, match=message):
        split_lora(keys)


def test_factor_predicates():
    assert is_lora_a("m.lora_A.weight") and is_lora_a("m.lora_embedding_A")
    assert is_lora_b("m.lora_B.weight") and is_lora_b("m.lora_embedding_B")
    assert not is_lora_b("m.lora_B.bias") and not is_lora_a("m.lora_B.weight")
    assert not is_lora_a("base_model.model.score.weight")


def test_pair_rank_checks_shapes():
    ok = {"a": torch.zeros(3, 5), "b": torch.zeros(7, 3)}
    assert pair_rank(ok, "a", "b") == 3
    with pytest.raises(ValueError, match="same r"):
        pair_rank({"a": torch.zeros(3, 5), "b": torch.zeros(7, 2)}, "a", "b")
    with pytest.raises(ValueError, match="only 2-D"):
        pair_rank({"a": torch.zeros(3, 5, 1, 1), "b": torch.zeros(7, 3, 1, 1)}, "a", "b")


def test_lora_scaling():
    assert lora_scaling(32, 16) == 2.0
    assert lora_scaling(32, 16, rslora=True) == 8.0
    with pytest.raises(ValueError):
        lora_scaling(8, 0)
