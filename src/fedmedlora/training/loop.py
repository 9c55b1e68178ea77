"""The local training loop: explicit, no trainer framework, so what runs is what you read.

One call trains for `steps` optimizer steps starting at global step `start_step` of a
run of `total_steps` (all rounds), which keeps the schedule continuous across rounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from fedmedlora.model.loading import autocast
from fedmedlora.training.batching import batch_order, collate
from fedmedlora.training.examples import Example
from fedmedlora.training.schedule import lr_multiplier


class TrainSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(5e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    local_steps: int = Field(10, ge=1, description="optimizer steps per round")
    warmup_steps: int = Field(2, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    validation_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share of a site's training documents held out to report a "
        "validation loss (Fed-MedLoRA+ without server data)",
    )
    validation_max_examples: int = Field(
        64,
        ge=1,
        description="at most this many held-out windows (a seeded sample) score the "
        "adapter each round: the loss only sets the weights, and a tenth of a large "
        "corpus would otherwise cost more than the local steps",
    )
    proximal_mu: float = Field(0.0, ge=0, description="FedProx: weight of the proximal term")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, ~30% slower"
    )
    mask_unannotated_types: bool = Field(
        False,
        description="at each tag's type name, leave the types a site does not annotate out "
        "of the loss (its labels say nothing about them); off: they are trained as wrong",
    )


def causal_lm_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token loss over the target tokens of a left-padded batch.

    Only the logits of the last K positions are computed (K = longest target + 1): the
    vocabulary projection of prompt tokens is skipped, about 30% of a SmolLM2 step.
    `batch["excluded"]` (row, label column, token id) take tokens out of the softmax of
    that target position (train.mask_unannotated_types).
    """
    labels = batch["labels"]
    width = labels.shape[1]
    has_target = (labels != -100).any(dim=0).nonzero()
    keep = width - int(has_target.min()) + 1 if has_target.numel() else 1
    # No key/value cache: nothing is generated here, and checkpointing refuses one.
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "excluded")}
    inputs["use_cache"] = False
    try:
        logits = model(**inputs, logits_to_keep=keep).logits
    except TypeError:  # models without logits_to_keep: compute all, use the tail
        logits = model(**inputs).logits[:, -keep:]
    logits = logits[:, :-1].float()
    targets = labels[:, width - keep + 1 :]
    if "excluded" in batch:
        row, column, token = batch["excluded"].unbind(dim=1)
        # The logit that predicts label column c sits at c - 1; this slice starts at
        # column width - keep + 1.
        at = column - (width - keep + 1)
        logits = logits.index_put((row, at, token), logits.new_tensor(float("-inf")))
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
    )


@dataclass
class TrainStats:
    steps: int = 0
    examples: int = 0
    tokens: int = 0
    target_tokens: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)

    @property
    def mean_loss(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else float("nan")


def train_steps(
    model,
    examples: Sequence[Example],
    settings: TrainSettings,
    *,
    pad_id: int,
    start_step: int,
    total_steps: int,
    seed: int,
    device: torch.device,
    precision: str,
    steps: int | None = None,
    collate_fn: Callable[[list, int], dict] = collate,
    loss_fn: Callable[[object, dict], torch.Tensor] = causal_lm_loss,
    regularizer: Callable[[], torch.Tensor] | None = None,
) -> TrainStats:
    """Train the model's trainable (adapter) parameters in place. `collate_fn`/`loss_fn`
    default to causal-LM fine-tuning; the encoder baseline passes its own. `regularizer`
    (e.g. FedProx's proximal term) is added to every step's loss."""
    steps = settings.local_steps if steps is None else steps
    stats = TrainStats()
    if not examples or steps == 0:
        return stats
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    lengths = [len(ex) for ex in examples]
    micro = iter(
        batch_order(
            len(examples),
            settings.batch_size,
            steps * settings.grad_accum,
            seed=seed,
            lengths=lengths,
        )
    )
    model.train()
    began = time.perf_counter()
    for step in range(start_step, start_step + steps):
        lr = settings.learning_rate * lr_multiplier(
            step, total_steps, settings.warmup_steps, settings.min_lr_ratio
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        batches = [
            collate_fn([examples[i] for i in next(micro)], pad_id)
            for _ in range(settings.grad_accum)
        ]
        n_target = sum(int((b["labels"] != -100).sum()) for b in batches)
        step_loss = 0.0
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(precision, device):
                loss = loss_fn(model, batch)
            # Weight each micro-batch by its share of target tokens, so accumulation
            # equals one large batch.
            share = int((batch["labels"] != -100).sum()) / n_target
            (loss * share).backward()
            step_loss += loss.item() * share
            stats.examples += batch["input_ids"].shape[0]
            stats.tokens += int(batch["attention_mask"].sum())
        stats.target_tokens += n_target
        if regularizer is not None:
            penalty = regularizer()
            penalty.backward()
            step_loss += float(penalty.detach())
        torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stats.losses.append(step_loss)
        stats.steps += 1
    if device.type == "cuda":  # the optimizer's kernels are queued: time them too
        torch.cuda.synchronize(device)
    stats.seconds = time.perf_counter() - began
    model.eval()
    return stats


@torch.no_grad()
def mean_loss(
    model,
    examples: Sequence[Example],
    *,
    pad_id: int,
    batch_size: int,
    device: torch.device,
    precision: str,
    collate_fn: Callable[[list, int], dict] = collate,
    loss_fn: Callable[[object, dict], torch.Tensor] = causal_lm_loss,
) -> float:
    """Loss over `examples`, weighted by target tokens as in training: how well an adapter
    fits held-out data (Fed-MedLoRA+ weights sites by it)."""
    if not examples:
        raise ValueError("no examples to compute a loss on")
    model.eval()
    total, weight = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = collate_fn(list(examples[start : start + batch_size]), pad_id)
        n = int((batch["labels"] != -100).sum())
        if n == 0:
            continue
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(precision, device):
            loss = loss_fn(model, batch)
        total += float(loss) * n
        weight += n
    if weight == 0:
        raise ValueError("the examples have no target tokens")
    return total / weight
