"""Batches for causal-LM fine-tuning: left padding, labels only on the target."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch

from fedmedlora.training.examples import Example

IGNORE = -100


def collate(batch: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded batch: every target ends at the last column, so the loss needs logits
    only for the last `max target length + 1` positions (see loop.causal_lm_loss)."""
    width = max(len(ex) for ex in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    excluded: list[tuple[int, int, int]] = []
    for row, ex in enumerate(batch):
        seq = ex.prompt_ids + ex.target_ids
        ids[row, width - len(seq) :] = torch.tensor(seq)
        first = width - len(ex.target_ids)
        labels[row, first:] = torch.tensor(ex.target_ids)
        mask[row, width - len(seq) :] = 1
        excluded += [
            (row, first + p, t)
            for p in ex.type_positions
            for t in ex.excluded_ids
            if t != ex.target_ids[p]  # never the gold token (a relabelled type may be)
        ]
    # Positions count real tokens only, as generation with left padding does.
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    out = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "labels": labels}
    if excluded:  # (row, label column, token id): left out of that position's softmax
        out["excluded"] = torch.tensor(excluded, dtype=torch.long)
    return out


def batch_order(
    n_examples: int,
    batch_size: int,
    n_batches: int,
    seed: int,
    lengths: Sequence[int] | None = None,
) -> Iterator[list[int]]:
    """`n_batches` index batches: seeded epochs, cycling as needed; within each block of
    8 batches examples are grouped by length so little compute is spent on padding."""
    if n_examples == 0:
        return
    rng = random.Random(seed)
    produced = 0
    while produced < n_batches:
        order = list(range(n_examples))
        rng.shuffle(order)
        block = batch_size * 8
        batches: list[list[int]] = []
        for i in range(0, len(order), block):
            group = order[i : i + block]
            if lengths is not None:
                group.sort(key=lambda k: lengths[k])
            batches += [group[j : j + batch_size] for j in range(0, len(group), batch_size)]
        rng.shuffle(batches)
        for b in batches:
            if produced == n_batches:
                return
            produced += 1
            yield b
