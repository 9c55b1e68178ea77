"""Aggregation algorithms as pure functions over tensors (no Flower), so they can be
tested and reused on their own."""

from __future__ import annotations

import math
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


def head_rows_from_trainers(
    current: State, states: Sequence[State], weights: Sequence[float], averaged: State
) -> dict[str, torch.Tensor]:
    """`averaged` with each row of a non-LoRA tensor (a task head: one row per label)
    averaged over the sites that changed it only; a row no site changed stays as it was.

    A site masks the labels of the types it does not annotate (task/tagging.py), so its
    head rows for them come back bit-for-bit unchanged. Averaging them in anyway pulls a
    type that one small site annotates back to its initial row, by the share of every other
    site (MACCROBAT's dosage, route, severity... kept 160 / 2560 of their training).
    With weight decay every row changes and this is the plain weighted average.
    """
    out = dict(averaged)
    for key, before in current.items():
        if "lora_" in key or before.dim() == 0:
            continue
        rows = before.reshape(before.shape[0], -1)
        stacked = torch.stack([s[key].reshape(rows.shape) for s in states]).to(torch.float64)
        changed = (stacked != rows.to(torch.float64)).any(dim=2)  # [sites, rows]
        if changed.all():
            continue
        w = torch.tensor([float(x) for x in weights], dtype=torch.float64)[:, None] * changed
        total = w.sum(dim=0)  # [rows]
        mean = (w[:, :, None] * stacked).sum(dim=0) / total.clamp(min=1e-300)[:, None]
        kept = torch.where(total[:, None] > 0, mean, rows.to(torch.float64))
        out[key] = kept.reshape(before.shape).to(averaged[key].dtype)
    return out


def cap_weights(weights: Sequence[float], cap: float) -> list[float]:
    """`weights` normalised to sum to 1 with none above `cap` (`federation.max_site_weight`).

    The excess of a capped weight goes to the others in proportion to their weights; that
    can lift another one over the cap, so it is repeated (water-filling) until none is
    above it, at most once per weight. Only positive weights share the excess: a site its
    method gave nothing (a Krum reject) stays at 0. When the k positive weights cannot
    all stay under the cap (k·cap <= 1) they become equal, 1/k each, the nearest to it.
    Hand-written: it is ten lines, and no maintained library has it.
    """
    w = [float(x) for x in weights]
    if not w or not all(math.isfinite(x) and x >= 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"weights must be finite, non-negative with a positive sum, got {w}")
    if not (math.isfinite(cap) and 0 < cap <= 1):
        raise ValueError(f"cap must be in (0, 1], got {cap}")
    total = math.fsum(w)
    p = [x / total for x in w]
    positive = [i for i, x in enumerate(p) if x > 0]
    if len(positive) * cap <= 1:
        return [1 / len(positive) if x > 0 else 0.0 for x in p]
    capped: set[int] = set()
    while True:
        free = [i for i in positive if i not in capped]
        share = (1 - cap * len(capped)) / math.fsum(p[i] for i in free)
        out = [cap if i in capped else p[i] * share for i in range(len(p))]
        over = {i for i in free if out[i] > cap}
        if not over:
            return out
        capped |= over
