"""FFA-LoRA (Sun et al., 2024): every site keeps lora_A frozen at the shared, seeded
initialisation and trains (and sends) only lora_B.

Because A is the same everywhere, Σ p_k B_k A = (Σ p_k B_k) A: the plain average of the
B factors is the exact average of the sites' updates, and half the adapter never has
to travel. (Same rank and scaling at every site is assumed, as FFA does.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from fedmedlora.federation.aggregation import State, weighted_average
from fedmedlora.federation.methods.base import Averaging, MethodSettings, register
from fedmedlora.federation.methods.lora_pairs import is_lora_a, pair_rank, split_lora
from fedmedlora.model.lora import frozen_parameter


def b_only(state: State) -> dict[str, torch.Tensor]:
    """What an FFA site sends: the lora_B factors and the non-LoRA tensors (a trained
    head, lora_B.bias), without the frozen lora_A factors."""
    split_lora(state)  # refuses unpaired or misspelt factors before anything is dropped
    return {k: v for k, v in state.items() if not is_lora_a(k)}


def with_frozen_a(b_state: State, frozen_a_state: State) -> dict[str, torch.Tensor]:
    """A full adapter state: `b_state` (as from `b_only`) plus the lora_A factors of
    `frozen_a_state` (a full state; its other keys are ignored).

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


class FFASettings(MethodSettings):
    method: Literal["ffa"] = "ffa"


@register
class FFA(Averaging):
    name = "ffa"
    settings_model = FFASettings
    summary = "average of B; A frozen at the shared seeded init (exact), only B travels"
    site_freeze = staticmethod(frozen_parameter)

    def downlink(self, full: State) -> dict[str, torch.Tensor]:
        return b_only(full)

    def full(self, sent: State) -> dict[str, torch.Tensor]:
        return with_frozen_a(sent, self.initial)

    def average(self, current: State, states: list[State], weights: list[float]) -> dict:
        return ffa_aggregate(states, weights)
