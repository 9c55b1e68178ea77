import pytest
import torch

from fedmedlora.errors import ConfigError
from fedmedlora.model.loading import load_causal_lm, load_tokenizer
from fedmedlora.model.lora import (
    LoraSettings,
    adapter_state,
    add_lora,
    load_adapter_state,
    save_adapter,
)
from fedmedlora.model.registry import resolve_model


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm("tiny-random"), load_tokenizer("tiny-random")


def test_fresh_adapter_equals_base_model_and_is_seeded(tiny):
    base, tok = tiny
    ids = torch.tensor([tok("chest pain")["input_ids"]])
    before = base(input_ids=ids).logits
    peft_model = add_lora(load_causal_lm("tiny-random"), LoraSettings(rank=4), seed=3)
    assert torch.allclose(peft_model(input_ids=ids).logits, before, atol=1e-6)
    again = add_lora(load_causal_lm("tiny-random"), LoraSettings(rank=4), seed=3)
    a, b = adapter_state(peft_model), adapter_state(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(".lora_A." in k or ".lora_B." in k for k in a)
    # all linear projections of both layers: q,k,v,o,gate,up,down x 2 layers x (A,B)
    assert len(a) == 7 * 2 * 2


def test_target_modules_and_rank_are_configurable():
    model = add_lora(
        load_causal_lm("tiny-random"), LoraSettings(rank=2, target_modules=["q_proj", "v_proj"])
    )
    state = adapter_state(model)
    assert len(state) == 2 * 2 * 2
    assert all(v.shape[0] == 2 for k, v in state.items() if "lora_A" in k)


def test_load_rejects_foreign_adapters():
    model = add_lora(load_causal_lm("tiny-random"), LoraSettings(rank=4))
    state = adapter_state(model)
    with pytest.raises(ValueError, match="unknown keys"):
        load_adapter_state(model, {**state, "extra.lora_A.weight": torch.zeros(1)})
    k = next(iter(state))
    with pytest.raises(ValueError, match="shape mismatch"):
        load_adapter_state(model, {**state, k: torch.zeros(1, 1)})


def test_saved_adapter_loads_with_plain_peft(tmp_path, tiny):
    from peft import PeftModel

    _, tok = tiny
    model = add_lora(load_causal_lm("tiny-random"), LoraSettings(rank=4))
    state = {k: torch.randn_like(v) * 0.1 for k, v in adapter_state(model).items()}
    save_adapter(model, state, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    plain = PeftModel.from_pretrained(load_causal_lm("tiny-random"), tmp_path / "adapter")
    ids = torch.tensor([tok("no fever")["input_ids"]])
    assert torch.allclose(plain(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)


def test_model_names(tmp_path):
    assert resolve_model("tiny-random").endswith("tiny-random-v2")
    with pytest.raises(ConfigError, match="not a Hugging Face model folder"):
        resolve_model(str(tmp_path))
    with pytest.raises(ConfigError, match="no such folder"):
        resolve_model("./nope/model")
    assert resolve_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
