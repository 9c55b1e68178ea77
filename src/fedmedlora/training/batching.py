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
    for row, ex in enumerate(batch):
        seq = ex.prompt_ids + ex.target_ids
        ids[row, width - len(seq) :] = torch.tensor(seq)
        labels[row, width - len(ex.target_ids) :] = torch.tensor(ex.target_ids)
        mask[row, width - len(seq) :] = 1
    # Positions count real tokens only, as generation with left padding does.
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "labels": labels}


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
