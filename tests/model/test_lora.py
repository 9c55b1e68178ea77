import pytest
import torch

from fedmedlora.errors import ConfigError
from fedmedlora.model.loading import load_causal_lm, load_tokenizer
from fedmedlora.model.lora import (
    BASE_RESIDUAL,
    LoraSettings,
    adapter_state,
    add_lora,
    apply_base_residual,
    load_adapter_state,
    merged_lora,
    offset_base_weights,
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


def test_merged_lora_computes_the_adapted_model_and_restores_the_weights_bit_for_bit(tiny):
    _, tok = tiny
    model = add_lora(load_causal_lm("tiny-random"), LoraSettings(rank=4), seed=1)
    state = adapter_state(model)
    torch.manual_seed(0)
    load_adapter_state(model, {k: torch.randn_like(v) * 0.1 for k, v in state.items()})
    ids = torch.tensor([tok("chest pain, metoprolol 25 mg")["input_ids"]])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapted = model(input_ids=ids).logits
    with merged_lora(model) as merged:
        assert merged == 7 * 2
        assert not torch.equal(
            model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight,
            before["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"],
        )
        assert torch.allclose(model(input_ids=ids).logits, adapted, atol=1e-4)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert torch.equal(model(input_ids=ids).logits, adapted)  # unmerged: the adapter runs again
    with pytest.raises(RuntimeError), merged_lora(model):
        raise RuntimeError("restored on errors too")
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)


def test_base_weight_offsets_apply_to_the_pretrained_weight_each_time():
    model = add_lora(load_causal_lm("tiny-random"), LoraSettings(rank=4), seed=1)
    name = "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
    weight = dict(model.named_parameters())[name]
    pretrained = weight.detach().clone()
    offset = torch.full_like(pretrained, 0.25)
    for _ in range(2):  # the whole offset each round, not a running sum
        offset_base_weights(model, {name: offset})
        assert torch.equal(weight, pretrained + offset)
    offset_base_weights(model, {name: torch.zeros_like(offset)})
    assert torch.equal(weight, pretrained)
    with pytest.raises(ValueError, match="no base weight named"):
        offset_base_weights(model, {"nope.weight": offset})
    lora_a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    with pytest.raises(ValueError, match="is trained, not a frozen base weight"):
        offset_base_weights(model, {lora_a: torch.zeros(4, pretrained.shape[1])})
    with pytest.raises(ValueError, match="offset"):
        offset_base_weights(model, {name: torch.zeros(2, 2)})


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_a_packed_quantized_base_weight_refuses_an_offset(quantization, kbit_cpu):
    """A k-bit base stores integer codes: adding FedEx-LoRA's float residual to them would
    corrupt the weight silently, so the offset is refused and the weight left as it was."""
    base = load_causal_lm("tiny-random", dtype="bf16", quantization=quantization)
    model = add_lora(base, LoraSettings(rank=2), seed=0)
    name = "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
    weight = dict(model.named_parameters())[name]
    assert not weight.is_floating_point()
    before = weight.detach().clone()
    with pytest.raises(ValueError, match=r"packed by quantization.*load the base unquantized"):
        offset_base_weights(model, {name: torch.zeros(weight.shape)})
    assert torch.equal(weight, before)


def test_a_saved_base_residual_travels_in_the_adapter_folder_and_loads_with_it(tmp_path):
    """FedEx-LoRA's global model is base + residual + adapter: an adapter folder that
    carries a residual, loaded with PEFT and `apply_base_residual`, computes exactly the
    model that saved it (plain PEFT alone would silently compute another)."""
    from peft import PeftModel

    model = add_lora(load_causal_lm("tiny-random"), LoraSettings(rank=2), seed=0)
    name = "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
    torch.manual_seed(0)
    residual = {name: torch.randn_like(dict(model.named_parameters())[name]) * 0.5}
    offset_base_weights(model, residual)
    ids = torch.tensor([[1, 5, 9, 3]])
    want = model(input_ids=ids).logits
    save_adapter(model, adapter_state(model), tmp_path / "a", base_residual=residual)
    assert (tmp_path / "a" / BASE_RESIDUAL).is_file()

    loaded = PeftModel.from_pretrained(load_causal_lm("tiny-random"), tmp_path / "a").eval()
    assert not torch.allclose(loaded(input_ids=ids).logits, want, atol=1e-4)
    assert apply_base_residual(loaded, tmp_path / "a") == 1
    assert torch.allclose(loaded(input_ids=ids).logits, want, atol=1e-6)

    save_adapter(model, adapter_state(model), tmp_path / "plain")
    assert apply_base_residual(loaded, tmp_path / "plain") == 0  # no residual, no change
    (tmp_path / "a" / BASE_RESIDUAL).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=f"{BASE_RESIDUAL}: not a readable safetensors"):
        apply_base_residual(loaded, tmp_path / "a")
    from safetensors.torch import save_file

    save_file({name: torch.zeros(3, 3)}, str(tmp_path / "a" / BASE_RESIDUAL))
    with pytest.raises(ValueError, match=f"{BASE_RESIDUAL}: .*offset \\(3, 3\\)"):
        apply_base_residual(loaded, tmp_path / "a")


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


def test_saved_adapter_names_its_base_model_portably(tmp_path):
    import json

    from fedmedlora.model.registry import portable_name

    model = add_lora(load_causal_lm("tiny-random"), LoraSettings(rank=2))
    save_adapter(model, adapter_state(model), tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-random"  # not this machine's cache
    assert portable_name("/x/hub/models--Org--Model/snapshots/abc123") == "Org/Model"
    assert portable_name(str(tmp_path)) == str(tmp_path)  # a user's own folder stays
    # Adapters saved before name another machine's cache folder: still resolved here.
    assert resolve_model("/home/else/.cache/fedmedlora/models/tiny-random-v2") == resolve_model(
        "tiny-random"
    )


def test_adapter_misfits_are_found_from_config_and_header_alone(tmp_path):
    import json

    from fedmedlora.model.loading import meta_model
    from fedmedlora.model.lora import adapter_problems, unmatched_targets

    settings = LoraSettings(rank=4, target_modules=["q_proj", "v_proj"])
    model = add_lora(load_causal_lm("tiny-random"), settings)
    save_adapter(model, adapter_state(model), tmp_path / "a")
    meta = meta_model(resolve_model("tiny-random"))
    assert {p.device.type for p in meta.parameters()} == {"meta"}  # no weights loaded
    assert adapter_problems(tmp_path / "a", meta) == []
    assert unmatched_targets(meta, ["q_proj", "qkv_proj"]) == ["qkv_proj"]
    assert unmatched_targets(meta, r".*\.q_proj") == []
    assert unmatched_targets(meta, "all-linear") == []

    config_file = tmp_path / "a" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "r": 8}))  # another rank
    (problem,) = adapter_problems(tmp_path / "a", meta)
    assert "8 adapter tensor(s) do not fit this model (rank 8)"  # q,v x 2 layers x A,B in problem
    assert "expected (8, " in problem
    config_file.write_text(json.dumps({**config, "target_modules": ["c_attn"]}))  # GPT-2's
    assert adapter_problems(tmp_path / "a", meta) == [
        "target modules ['c_attn'] are not in this model"
    ]
    config_file.write_text(json.dumps(config))
    (tmp_path / "a" / "adapter_model.safetensors").rename(tmp_path / "weights")
    assert adapter_problems(tmp_path / "a", meta) == [
        "no adapter weights (adapter_model.safetensors is missing)"
    ]
    (tmp_path / "a" / "adapter_model.safetensors").write_text("not safetensors")
    assert "not a readable safetensors file" in adapter_problems(tmp_path / "a", meta)[0]
    assert "not a PEFT adapter folder" in adapter_problems(tmp_path, meta)[0]
