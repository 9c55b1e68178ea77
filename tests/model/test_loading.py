"""Loading a base model: the LM head's input (model/loading.py)."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from fedmedlora.model.loading import load_causal_lm


def _peak_bytes(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def test_the_head_gets_a_contiguous_input_so_a_bf16_cpu_step_copies_no_weight_per_row():
    model = load_causal_lm("tiny-random", dtype="bf16")
    head = model.get_output_embeddings()
    seen = []
    head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].is_contiguous()))
    ids = torch.randint(3, 600, (16, 64))
    with torch.no_grad():
        logits = model(input_ids=ids, logits_to_keep=9).logits
    assert seen == [True] and logits.shape == (16, 9, 600)
    # Without the hook a 16-bit linear on the sliced hidden states runs as a batched
    # matmul that copies the head's weight for each of the 16 rows.
    weight_per_row = 16 * head.weight.numel() * head.weight.element_size()
    x = torch.randn(16, 64, 64, dtype=torch.bfloat16)[:, -9:]
    sliced = _peak_bytes(lambda: torch.nn.functional.linear(x, head.weight))
    contiguous = _peak_bytes(lambda: head(x))
    assert sliced >= weight_per_row > 4 * contiguous


def test_device_map_auto_goes_to_accelerate_and_the_model_is_not_moved_after(monkeypatch):
    """A base bigger than one GPU: accelerate places its layers (`device_map="auto"`) and
    the loader must not move the model again. Only the hand-over is testable without
    several GPUs; on this CPU accelerate puts every layer on the CPU."""
    from transformers import AutoModelForCausalLM

    seen = {}
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        model = real(*args, **kwargs)
        monkeypatch.setattr(model, "to", lambda *a, **k: pytest.fail("moved after placement"))
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    model = load_causal_lm("tiny-random", device_map="auto")
    assert seen["device_map"] == "auto"
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_the_attention_setting_reaches_the_model_and_eager_gives_the_same_logits():
    ids = torch.randint(3, 600, (2, 24))
    models = {a: load_causal_lm("tiny-random", attention=a) for a in ("sdpa", "eager")}
    assert {a: m.config._attn_implementation for a, m in models.items()} == {
        "sdpa": "sdpa",
        "eager": "eager",
    }
    with torch.no_grad():
        sdpa, eager = (models[a](input_ids=ids).logits for a in ("sdpa", "eager"))
    torch.testing.assert_close(sdpa, eager, rtol=1e-4, atol=1e-4)


def test_hub_kernels_stay_off_so_an_offline_gpu_site_can_train():
    """transformers turns hub kernels on by default when `kernels` is installed; on a GPU
    `model.train()` then resolves them on the hub and, offline, every site's first round
    failed (H200, benchmarks/gpu_check.py). Our loaders must switch them off."""
    from transformers import AutoModelForCausalLM

    from fedmedlora.model.loading import load_token_classifier
    from fedmedlora.model.registry import resolve_model

    default = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-random"))
    if not default.use_kernels:
        pytest.skip("this transformers/kernels pair leaves hub kernels off by default")
    model = load_causal_lm("tiny-random")
    model.train()
    assert model.use_kernels is False and model.kernels_mode is None
    encoder = load_token_classifier("minilm-l6", num_labels=3)
    assert encoder.use_kernels is False
