"""FFA-LoRA (Sun et al., 2024): every site keeps lora_A frozen at the shared, seeded
initialisation and trains (and sends) only lora_B.

Because A is the same everywhere, Σ p_k B_k A = (Σ p_k B_k) A: the plain average of the
B factors is the exact average of the sites' updates, and half the adapter never has
to travel. (Same rank and scaling at every site is assumed, as FFA does.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedmedlora.federation.aggregation import State, weighted_average
from fedmedlora.federation.methods.lora_pairs import is_lora_a, pair_rank, split_lora


def frozen_parameter(name: str) -> bool:
    """Whether the site must freeze this parameter under FFA-LoRA: every lora_A factor.

    Takes `model.named_parameters()` names, which carry the adapter name
    (`...q_proj.lora_A.default.weight`, `...embed_tokens.lora_embedding_A.default`), and
    also state-dict keys, for use as a `freeze(name)` predicate in the training loop.
    """
    return ".lora_A." in name or ".lora_embedding_A." in name or name.endswith(".lora_embedding_A")


def b_only(state: State) -> dict[str, torch.Tensor]:
    """What an FFA site sends: the lora_B factors and the non-LoRA tensors (a trained
    head, lora_B.bias), without the frozen lora_A factors."""
    split_lora(state)  # refuses unpaired or misspelt factors before anything is dropped
    return {k: v for k, v in state.items() if not is_lora_a(k)}


def a_only(state: State) -> dict[str, torch.Tensor]:
    """The frozen lora_A factors of a full state, which the server keeps to rebuild full
    adapters (for saving or evaluation) with `with_frozen_a`."""
    return {k: state[k] for k in split_lora(state).a_keys}


def with_frozen_a(b_state: State, frozen_a_state: State) -> dict[str, torch.Tensor]:
    """A full adapter state: `b_state` (as from `b_only`) plus the lora_A factors of
    `frozen_a_state` (a full state, or `a_only` of one; its other keys are ignored).

    Every B must find its A and every A its B, with matching ranks.
    """
    sent_a = [k for k in b_state if is_lora_a(k)]
    if sent_a:
        raise ValueError(f"b_state must not contain lora_A factors, got e.g. {sent_a[0]!r}")
    full = {**{k: v for k, v in frozen_a_state.items() if is_lora_a(k)}, **b_state}
    a_of_b = {}
    for a_key, b_key in split_lora(full).pairs.values():
        pair_rank(full, a_key, b_key)
        a_of_b[b_key] = a_key
    ordered: dict[str, torch.Tensor] = {}
    for key, value in b_state.items():  # PEFT's order: each A just before its B
        if key in a_of_b:
            ordered[a_of_b[key]] = full[a_of_b[key]]
        ordered[key] = value
    return ordered


def ffa_aggregate(b_states: Sequence[State], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """The weighted average of the sites' B-only states (see `b_only`). With the shared A
    this is exactly the weighted average of the sites' B·A products."""
    for k, s in enumerate(b_states):
        sent_a = [key for key in s if is_lora_a(key)]
        if sent_a:
            raise ValueError(f"site {k} sent lora_A factors ({sent_a[0]!r}); FFA-LoRA sends only B")
    return weighted_average(b_states, weights)
