"""Learning-rate schedule over the whole federated run, so round r continues where
round r-1 stopped instead of warming up again.

Linear warmup then cosine decay to `min_ratio`; a few lines, kept here because the
step offset across rounds must be explicit (transformers' schedulers start at step 0).
"""

from __future__ import annotations

import math


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.1) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
