"""The planner's estimates from config.json files alone (public configs, no weights)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmedlora.model.memory import (
    PROJECTIONS,
    Shape,
    layer_activation_bytes,
    lora_params,
    plan_memory,
    plan_traffic,
    weight_bytes,
)

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
    eager = _plan("llama-3.2-1b", False, attention="eager")  # nf4 without autocast: fp32
    assert eager.activations - big.activations == 16 * 2 * 4 * 32 * 1024 * 1024 * 4
    sdpa16 = _plan("llama-3.2-1b", False, autocast_bf16=True)
    eager16 = _plan("llama-3.2-1b", False, attention="eager", autocast_bf16=True)
    assert eager16.activations - sdpa16.activations == 16 * 2 * 4 * 32 * 1024 * 1024 * 2


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


# --- The terms against the tensors a real step keeps (tiny model, measured here) ---


def _kept_for_backward(dtype: str, autocast_bf16: bool, dropout: float, checkpointing: bool):
    """(bytes autograd keeps at the end of the forward pass, the plan, tokens): one
    tiny-model forward with the loop's loss, every kept tensor counted once by storage;
    a frozen parameter kept as itself costs nothing."""
    import torch

    from fedmedlora.model.loading import autocast, load_causal_lm
    from fedmedlora.model.lora import LoraSettings, add_lora
    from fedmedlora.model.registry import resolve_model
    from fedmedlora.training.batching import collate
    from fedmedlora.training.examples import Example
    from fedmedlora.training.loop import causal_lm_loss

    batch, length, rank = 3, 32, 4
    base = load_causal_lm("tiny-random", dtype=dtype, gradient_checkpointing=checkpointing)
    model = add_lora(base, LoraSettings(rank=rank, dropout=dropout), seed=0)
    model.train()
    g = torch.Generator().manual_seed(0)
    data = collate(
        [
            Example(
                torch.randint(3, 600, (length // 2,), generator=g).tolist(),
                torch.randint(3, 600, (length // 2,), generator=g).tolist(),
            )
            for _ in range(batch)
        ],
        0,
    )
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            kept[s.data_ptr()] = s.nbytes()
        return t

    precision = "bf16-autocast" if autocast_bf16 else "fp32"
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        autocast(precision, torch.device("cpu")),
    ):
        loss = causal_lm_loss(model, data)
    loss.backward()  # the step runs through
    plan = plan_memory(
        Shape.from_file(Path(resolve_model("tiny-random")) / "config.json"),
        dtype=dtype, quantization="none", rank=rank, target_modules="all-linear",
        dropout=dropout, batch_size=batch, length=length, checkpointing=checkpointing,
        autocast_bf16=autocast_bf16,
    )  # fmt: skip
    return sum(kept.values()), plan, batch * length


@pytest.mark.parametrize(
    ("dtype", "autocast_bf16", "dropout"),
    [
        ("fp32", False, 0.05),
        ("fp32", True, 0.05),
        ("bf16", True, 0.05),
        ("bf16", False, 0.05),
        ("fp32", False, 0.0),
        ("bf16", True, 0.0),
    ],
)
def test_activation_and_autocast_copy_terms_match_the_tensors_a_step_keeps(
    dtype, autocast_bf16, dropout
):
    measured, plan, _ = _kept_for_backward(dtype, autocast_bf16, dropout, checkpointing=False)
    # At the end of the forward pass: the activations, autocast's weight copies and the
    # loss's fp32 log-softmax (one of the logits term's three tensors).
    expected = plan.activations + plan.autocast_copies + plan.logits // 3
    assert measured == pytest.approx(expected, rel=0.04)


@pytest.mark.parametrize(("dtype", "autocast_bf16"), [("fp32", False), ("fp32", True)])
def test_checkpointing_keeps_each_layers_input_only(dtype, autocast_bf16):
    measured, plan, tokens = _kept_for_backward(dtype, autocast_bf16, 0.05, checkpointing=True)
    # tiny-random: 2 layers, hidden 64, vocabulary 600 (tied head). Kept outside the
    # checkpointed layers: each layer's fp32 input, the final norm's input, the
    # log-softmax and, under autocast, the head's bf16 copy.
    head_copy = 2 * 600 * 64 if autocast_bf16 else 0
    expected = 2 * tokens * 64 * 4 + tokens * 64 * 4 + plan.logits // 3 + head_copy
    assert measured == pytest.approx(expected, rel=0.02)
    # what the plan adds to those: one layer recomputed (activations and weight copies)
    # and the LoRA weights' cached bf16 casts
    layer_copies = 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128) if autocast_bf16 else 0
    lora_copies = 2 * plan.lora // 4 if autocast_bf16 else 0
    assert plan.autocast_copies_checkpointed == head_copy + layer_copies + lora_copies


# --- Config-only sanity on the public configs ---


def test_llama_8b_per_token_bytes_by_hand():
    """bf16 weights under autocast, dropout, r16 on all 7: per layer and token, 2 fp32 norm
    inputs, q k v and attention output in bf16 (4096, 1024, 1024, 4096), gate/SiLU/up in
    bf16 (14336 each), and per projection the fp32 dropout mask + bf16 dropped input
    (inputs 4096 x 6 + 14336) + lora_B's bf16 rank-16 input."""
    per = layer_activation_bytes(
        shape("llama-3.1-8b"), list(PROJECTIONS), dtype="bf16", quantization="none",
        autocast_bf16=True, dropout=True, rank=16,
    )  # fmt: skip
    assert per == 2 * 4096 * 4 + 2 * (2 * 4096 + 2 * 1024) + 3 * 14336 * 2 + (
        (6 * 4096 + 14336) * (4 + 2) + 7 * 16 * 2
    )


def test_autocast_copies_only_where_weights_are_not_bf16():
    s = shape("qwen2.5-7b")
    fp32 = _plan("qwen2.5-7b", False, dtype="fp32", quantization="none", autocast_bf16=True)
    bf16 = _plan("qwen2.5-7b", False, quantization="none", autocast_bf16=True)
    nf4 = _plan("qwen2.5-7b", True, autocast_bf16=True)
    head = 2 * s.vocab * s.hidden  # Qwen2.5-7B's head is untied: a copy of its own
    lora = 2 * lora_params(s, 16, "all-linear")  # the adapter's cached bf16 casts
    first_qkv = 2 * s.hidden * (s.hidden + 2 * 512)  # layer 0's q/k/v keep no copy
    assert fp32.autocast_copies == 2 * s.linear_params - first_qkv + head + lora
    assert fp32.autocast_copies_checkpointed == 2 * s.linear_params // s.layers + head + lora
    assert bf16.autocast_copies == lora
    assert nf4.autocast_copies == nf4.autocast_copies_checkpointed == head + lora  # fp32 head
    assert _plan("qwen2.5-7b", False, dtype="fp32", quantization="none").autocast_copies == 0


def test_k_bit_keeps_an_fp32_residual_stream_and_fp32_mlp_activations():
    s, tokens = shape("llama-3.2-1b"), 4 * 1024
    final_norm = tokens * s.hidden * 4

    def layer_inputs(p, quantization):  # what checkpointing keeps but the recomputed layer
        per_layer = tokens * layer_activation_bytes(
            s, list(PROJECTIONS), dtype="bf16", quantization=quantization,
            autocast_bf16=True, dropout=True, rank=16,
        )  # fmt: skip
        return p.activations_checkpointed - final_norm - per_layer

    nf4 = _plan("llama-3.2-1b", True, autocast_bf16=True)
    bf16 = _plan("llama-3.2-1b", True, quantization="none", autocast_bf16=True)
    assert layer_inputs(nf4, "nf4") == s.layers * tokens * s.hidden * 4
    assert layer_inputs(bf16, "none") == s.layers * tokens * s.hidden * 2
    assert nf4.activations - bf16.activations == s.layers * tokens * 3 * s.intermediate * 2


def test_logits_are_three_fp32_tensors_of_the_target_tail():
    p = _plan("llama-3.1-8b", True, length=1000)
    assert p.logits == 4 * 500 * 128_256 * 4 * 3


def test_the_cpu_allocator_term_is_a_share_of_the_live_peak_and_only_on_cpu():
    from fedmedlora.model.memory import CPU_ALLOCATOR_SHARE

    gpu = _plan("llama-3.2-1b", True)
    cpu = _plan("llama-3.2-1b", True, device="cpu")
    assert gpu.allocator == 0 and gpu.total == gpu.live == cpu.live
    assert CPU_ALLOCATOR_SHARE > 0
    assert cpu.allocator == round(CPU_ALLOCATOR_SHARE * cpu.live)
    assert (
        cpu.step_tensors
        == cpu.activations_checkpointed + cpu.logits + cpu.autocast_copies_checkpointed
    )
    assert cpu.as_dict()["total"] == cpu.live + cpu.allocator
