"""Random adapters and dense references for the method tests (dense ΔW only here)."""

from __future__ import annotations

import torch

PREFIX = "base_model.model.model.layers.0.self_attn"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(g: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def randint(g: torch.Generator, low: int, high: int) -> int:
    """An int in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=g))


def adapter(
    g: torch.Generator,
    rank: int,
    modules: dict[str, tuple[int, int]] | None = None,
    *,
    head: bool = True,
    shared_a: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """A PEFT-keyed adapter state: per module (out, in) an A (r, in) and B (out, r), plus a
    token-classification head if asked. `shared_a` fixes the A factors (FFA)."""
    modules = modules or {"q_proj": (6, 5), "v_proj": (3, 5)}
    state: dict[str, torch.Tensor] = {}
    for name, (out_dim, in_dim) in modules.items():
        a_key = f"{PREFIX}.{name}.lora_A.weight"
        state[a_key] = randn(g, rank, in_dim) if shared_a is None else shared_a[a_key].clone()
        state[f"{PREFIX}.{name}.lora_B.weight"] = randn(g, out_dim, rank)
    if head:
        state["base_model.model.score.weight"] = randn(g, 3, 5)
        state["base_model.model.score.bias"] = randn(g, 3)
    return state


def dense(b: torch.Tensor, a: torch.Tensor, scaling: float = 1.0) -> torch.Tensor:
    return scaling * (b.to(torch.float64) @ a.to(torch.float64))


def best_rank(m: torch.Tensor, rank: int) -> torch.Tensor:
    """Eckart–Young: the dense SVD truncation, the reference the factored code must hit."""
    u, s, vh = torch.linalg.svd(m.to(torch.float64), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def close(x: torch.Tensor, y: torch.Tensor, rtol: float = 1e-5) -> bool:
    """Equal up to `rtol` relative to the larger Frobenius norm (float32 factors)."""
    x, y = x.to(torch.float64), y.to(torch.float64)
    scale = max(float(x.norm()), float(y.norm()), 1.0)
    return float((x - y).norm()) <= rtol * scale


def tiny_llama_config(**extra):
    """A one-layer Llama config small enough for real PEFT modules in unit tests."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        **extra,
    )
