"""Aggregation algorithms as pure functions over tensors (no Flower), so they can be
tested and reused on their own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

State = Mapping[str, torch.Tensor]


def weighted_average(states: Sequence[State], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Fed-MedLoRA: the example-weighted average of every adapter tensor, key by key.

    LoRA A and B factors are averaged separately (not their product), as in FedAvg
    over adapter parameters; all sites must share the same keys and shapes.
    """
    if not states:
        raise ValueError("nothing to aggregate")
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
    keys = set(states[0])
    for i, s in enumerate(states[1:], start=1):
        if set(s) != keys:
            diff = sorted(set(s) ^ keys)[:3]
            raise ValueError(f"state {i} has different keys from state 0 (e.g. {diff})")
    total = float(sum(weights))
    out: dict[str, torch.Tensor] = {}
    for key in states[0]:
        shape = states[0][key].shape
        acc = torch.zeros(shape, dtype=torch.float64)
        for s, w in zip(states, weights, strict=True):
            if s[key].shape != shape:
                raise ValueError(f"{key}: shape {tuple(s[key].shape)} != {tuple(shape)}")
            acc += s[key].to(torch.float64) * (w / total)
        out[key] = acc.to(states[0][key].dtype)
    return out
