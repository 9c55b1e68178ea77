"""Base-model dtype, k-bit quantization and gradient checkpointing (docs/scale.md)."""

from __future__ import annotations

import pytest
import torch

from fedmedlora.data.schema import load_schema
from fedmedlora.data.site import SiteSpec
from fedmedlora.errors import ConfigError
from fedmedlora.model.loading import load_causal_lm, load_tokenizer, quantization_config
from fedmedlora.model.lora import LoraSettings, adapter_state, add_lora
from fedmedlora.training.batching import collate
from fedmedlora.training.examples import build_examples
from fedmedlora.training.loop import TrainSettings, causal_lm_loss, train_steps
from tests.fixtures import notes

CPU = torch.device("cpu")


def _examples(name: str, n_docs: int = 4, chunk: int = 200):
    tok = load_tokenizer(name)
    schema = load_schema()
    return tok, build_examples(
        notes(n_docs), SiteSpec.full("a", schema), schema, tok, max_chunk_tokens=chunk
    ).examples


def _one_step(model, tok, examples, precision="fp32"):
    return train_steps(
        model,
        examples,
        TrainSettings(learning_rate=1e-3, batch_size=4, local_steps=1, warmup_steps=0),
        pad_id=tok.pad_token_id,
        start_step=0,
        total_steps=1,
        seed=0,
        device=CPU,
        precision=precision,
    )


def test_bf16_base_loads_in_bf16_and_trains_its_adapter():
    tok, examples = _examples("tiny-random")
    model = add_lora(load_causal_lm("tiny-random", dtype="bf16"), LoraSettings(rank=4), seed=0)
    base = [p for n, p in model.named_parameters() if "lora_" not in n]
    assert base and all(p.dtype == torch.bfloat16 and not p.requires_grad for p in base)
    before = adapter_state(model)
    stats = _one_step(model, tok, examples, precision="bf16-autocast")
    after = adapter_state(model)
    assert stats.steps == 1 and torch.isfinite(torch.tensor(stats.losses)).all()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(v.dtype == torch.float32 for v in after.values())


@pytest.mark.slow
def test_bf16_smollm2_loss_is_close_to_fp32_and_a_step_trains():
    tok, examples = _examples("smollm2-135m", n_docs=2, chunk=48)
    batch = collate(examples[:4], tok.pad_token_id)
    losses = {}
    for dtype in ("fp32", "bf16"):
        model = add_lora(load_causal_lm("smollm2-135m", dtype=dtype), LoraSettings(rank=4), seed=0)
        with torch.no_grad():
            losses[dtype] = float(causal_lm_loss(model, batch))
        if dtype == "bf16":
            assert model.get_input_embeddings().weight.dtype == torch.bfloat16
            stats = _one_step(model, tok, examples[:4], precision="bf16-autocast")
            assert stats.steps == 1 and stats.losses[0] == pytest.approx(losses["bf16"], rel=0.05)
        del model
    # bf16 weights round each weight to 8 bits of mantissa: the loss moves a little.
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


def _loss_and_grads(checkpointing: bool, tok, examples):
    model = add_lora(
        load_causal_lm("tiny-random", gradient_checkpointing=checkpointing),
        LoraSettings(rank=4, dropout=0.1),
        seed=0,
    )
    model.train()
    torch.manual_seed(7)  # the same dropout masks: checkpointing replays the RNG state
    loss = causal_lm_loss(model, collate(examples[:4], tok.pad_token_id))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads, model


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    tok, examples = _examples("tiny-random")
    loss, grads, _ = _loss_and_grads(False, tok, examples)
    loss_ckpt, grads_ckpt, model = _loss_and_grads(True, tok, examples)
    assert model.base_model.model.is_activation_checkpointing
    assert loss_ckpt == pytest.approx(loss, rel=1e-6)
    assert grads.keys() == grads_ckpt.keys() and grads
    for name, g in grads.items():
        torch.testing.assert_close(grads_ckpt[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_unknown_dtype_or_quantization_is_a_config_error():
    with pytest.raises(ConfigError, match="quantization must be one of"):
        quantization_config("int4", "bf16")
    with pytest.raises(ConfigError, match="dtype must be one of"):
        load_causal_lm("tiny-random", dtype="fp8")
    assert quantization_config("none", "fp32") is None


@pytest.mark.parametrize(
    "quantization, loaded, layer",
    [("nf4", "is_loaded_in_4bit", "Linear4bit"), ("int8", "is_loaded_in_8bit", "Linear8bitLt")],
)
def test_kbit_base_trains_its_adapter_on_cpu_where_bitsandbytes_supports_it(
    quantization, loaded, layer, kbit_cpu
):
    tok, examples = _examples("tiny-random")
    base = load_causal_lm("tiny-random", dtype="bf16", quantization=quantization)
    assert getattr(base, loaded)
    kinds = {type(m).__name__ for m in base.modules()}
    assert layer in kinds
    model = add_lora(base, LoraSettings(rank=4), seed=0)
    before = adapter_state(model)
    stats = _one_step(model, tok, examples, precision="bf16-autocast")
    after = adapter_state(model)
    assert stats.steps == 1 and torch.isfinite(torch.tensor(stats.losses)).all()
    assert any(not torch.equal(before[k], after[k]) for k in before)
