"""FedSA-LoRA (Guo et al., 2025): lora_A learns what is common to all sites and is
shared (aggregated); lora_B learns what is site-specific and never leaves the site.

The server only ever sees and averages the shared part; each site merges the new global
shared part with its own B before training on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from fedmedlora.federation.aggregation import State, weighted_average
from fedmedlora.federation.methods.base import Averaging, MethodSettings, register
from fedmedlora.federation.methods.lora_pairs import is_lora_b, pair_rank, split_lora


def shared_part(state: State) -> dict[str, torch.Tensor]:
    """What a FedSA site sends: its lora_A factors and non-LoRA tensors (e.g. a trained
    head), not its personal lora_B factors."""
    split_lora(state)  # refuses unpaired or misspelt factors before anything is dropped
    return {k: v for k, v in state.items() if not is_lora_b(k)}


def aggregate_shared(
    shared_states: Sequence[State], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """The weighted average of the sites' shared parts (A factors averaged alone; B stays
    personal, so there is no product to keep)."""
    for k, s in enumerate(shared_states):
        sent_b = [key for key in s if is_lora_b(key)]
        if sent_b:
            raise ValueError(f"site {k} sent lora_B factors ({sent_b[0]!r}); FedSA keeps B local")
    return weighted_average(shared_states, weights)


def merge_personal(global_shared: State, local_state: State) -> dict[str, torch.Tensor]:
    """The site's next adapter: the global shared part (A factors, non-LoRA tensors) with
    the site's own lora_B factors, in `local_state`'s key order.

    `global_shared` must hold exactly the keys of `shared_part(local_state)` with the same
    shapes, so that a mismatched global is refused instead of half-loaded.
    """
    expected = shared_part(local_state)
    if set(global_shared) != set(expected):
        diff = sorted(set(global_shared) ^ set(expected))[:3]
        raise ValueError(f"global shared part does not match this site's adapter (e.g. {diff})")
    bad = [k for k in expected if tuple(global_shared[k].shape) != tuple(expected[k].shape)]
    if bad:
        raise ValueError(f"global shared part has other shapes than this site's for {bad[:3]}")
    merged = {k: (v if is_lora_b(k) else global_shared[k]) for k, v in local_state.items()}
    for a_key, b_key in split_lora(merged).pairs.values():
        pair_rank(merged, a_key, b_key)
    return merged


class FedSASettings(MethodSettings):
    method: Literal["fedsa"] = "fedsa"


@register
class FedSA(Averaging):
    name = "fedsa"
    settings_model = FedSASettings
    summary = "average of A; every site keeps its own B (personalized)"
    kept_local = staticmethod(is_lora_b)

    def downlink(self, full: State) -> dict[str, torch.Tensor]:
        return shared_part(full)

    def full(self, sent: State) -> dict[str, torch.Tensor]:
        """The shared part with the initial, zero B (the personalized adapters stay at
        the sites)."""
        return merge_personal(sent, self.initial)

    def average(self, current: State, states: list[State], weights: list[float]) -> dict:
        return aggregate_shared(states, weights)

    def save(self, model: Any, sent: State, out_dir: Path) -> None:
        """Only the shared part: each site's B never left it, so there is no global
        adapter (the sites keep their personalized ones, see SiteSource.keep_dir)."""
        from safetensors.torch import save_file

        save_file(dict(sent), str(out_dir / "shared_adapter.safetensors"))
