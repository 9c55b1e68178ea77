"""The planner's estimates from config.json files alone (public configs, no weights)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmedlora.model.memory import Shape, lora_params, plan_memory, plan_traffic, weight_bytes

CONFIGS = Path(__file__).resolve().parents[1] / "fixtures" / "model_configs"
GIB = 2**30


def shape(name: str) -> Shape:
    return Shape.from_file(CONFIGS / name / "config.json")


@pytest.mark.parametrize(
    ("name", "published"),
    [("llama-3.1-8b", 8.03e9), ("qwen2.5-7b", 7.62e9), ("llama-3.2-1b", 1.24e9)],
)
def test_parameter_counts_match_the_published_sizes(name, published):
    assert shape(name).params == pytest.approx(published, rel=0.005)


def test_lora_r16_on_all_projections_of_llama_8b_is_the_known_42m():
    s = shape("llama-3.1-8b")
    assert lora_params(s, 16, "all-linear") == 41_943_040
    assert lora_params(s, 16, ["q_proj", "v_proj"]) == 32 * 16 * (4096 + 4096 + 4096 + 1024)


def test_weights_by_dtype_and_quantization():
    s = shape("llama-3.1-8b")
    assert weight_bytes(s, "fp32", "none") == 4 * s.params
    assert weight_bytes(s, "bf16", "none") == 2 * s.params
    nf4, int8 = weight_bytes(s, "bf16", "nf4"), weight_bytes(s, "bf16", "int8")
    # 4-bit linear layers plus fp32 embeddings and head (2 x 525M parameters): ~7.3 GiB
    assert 7.0 * GIB < nf4 < 7.6 * GIB < int8 < weight_bytes(s, "bf16", "none")


def _plan(name, checkpointing, **over):
    settings = dict(
        dtype="bf16",
        quantization="nf4",
        rank=16,
        target_modules="all-linear",
        dropout=0.05,
        batch_size=4,
        length=1024,
        checkpointing=checkpointing,
    )
    return plan_memory(shape(name), **(settings | over))


def test_the_paper_setting_fits_one_hospital_gpu_only_with_checkpointing():
    full, ckpt = _plan("llama-3.1-8b", False), _plan("llama-3.1-8b", True)
    assert ckpt.total < 24 * GIB < full.total
    assert ckpt.activations_checkpointed < full.activations / 10
    assert full.optimizer == 2 * full.lora == 8 * 41_943_040


def test_activations_grow_with_tokens_and_eager_attention_adds_the_square():
    small, big = _plan("llama-3.2-1b", False, length=512), _plan("llama-3.2-1b", False)
    assert big.activations == pytest.approx(2 * small.activations, rel=0.01)
    eager = _plan("llama-3.2-1b", False, attention="eager")
    assert eager.activations - big.activations == 16 * 2 * 4 * 32 * 1024 * 1024 * 2


def test_traffic_counts_adapter_messages_against_full_model_fedavg():
    s = shape("qwen2.5-7b")
    t = plan_traffic(
        s, rank=16, target_modules="all-linear", wire_bytes=2, model_bytes=2,
        sites=3, rounds=3, evaluations=4,
    )  # fmt: skip
    assert t.adapter_bytes == 2 * lora_params(s, 16, "all-linear")
    assert t.round_bytes == 3 * 2 * t.adapter_bytes
    assert t.run_bytes == 3 * (2 * 3 + 4) * t.adapter_bytes
    assert t.full_model_run_bytes / t.run_bytes == pytest.approx(s.params / t.adapter_bytes * 2)


def test_a_config_without_the_needed_fields_is_refused():
    with pytest.raises(ValueError, match="not a decoder config"):
        Shape.from_config({"model_type": "bert"}, "x/config.json")
