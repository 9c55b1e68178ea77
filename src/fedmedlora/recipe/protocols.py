"""The evaluation protocols and non-federated baselines, as building blocks:

- in-domain: each site's held-out test split;
- external validation: cohorts no method ever trains on;
- new-site adaptation: a site with k labelled documents, starting from the federated
  adapter or from the base model, with the same steps (`epochs`: every one of the k
  documents' windows seen, whatever k is);
- local personalization after federation (LP-FT): a site tunes the federated adapter
  on its own data, first only B (and a head), then every adapter weight.

Single-site and centralized baselines train in one process with the same local recipe
(examples, loop, schedule) the federated clients use; only the data differs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fedmedlora.data.document import Document
from fedmedlora.data.schema import load_schema
from fedmedlora.data.site import SiteSpec
from fedmedlora.data.sites import SiteData
from fedmedlora.evaluation.metrics import Scores
from fedmedlora.model.lora import adapter_state, load_adapter_state
from fedmedlora.recipe.settings import Recipe
from fedmedlora.recipe.site_recipe import (
    SiteRecipe,
    build_site_examples,
    evaluate_on,
    initial_adapter,
    loaded_model,
    train_on,
)
from fedmedlora.training.loop import TrainStats

State = dict[str, torch.Tensor]


@dataclass
class EvalSet:
    """Documents to score and what counts there (`spec`: the types they annotate)."""

    name: str
    setting: str  # "in-domain", "external" or "new-site"
    docs: list[Document]
    spec: SiteSpec


def evaluate_state(
    recipe: Recipe,
    state: State,
    sets: Sequence[EvalSet],
    *,
    zero_shot_prompt: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Scores]:
    """Scores of one adapter on every set."""
    load_adapter_state(loaded_model(recipe).model, state)
    out: dict[str, Scores] = {}
    for s in sets:
        scores, stats = evaluate_on(recipe, s.docs, s.spec, zero_shot_prompt=zero_shot_prompt)
        out[s.name] = scores
        summary = scores.summary()
        log(
            f"    {s.name:<12} entity strict {summary['entity_strict_f1']:.3f} lenient "
            f"{summary['entity_lenient_f1']:.3f} ({stats.chunks} windows, {stats.seconds:.0f}s)"
        )
    return out


def train_local(
    recipe: Recipe,
    sites: Sequence[SiteData],
    steps: int,
    *,
    start: State | None = None,
    seed: int = 0,
    epochs: float = 0.0,
) -> tuple[State, TrainStats]:
    """Train one adapter on the pooled training data of `sites` (one site: the
    single-site baseline; all sites: the centralized upper bound). `epochs`: at least
    that many passes over the examples (more steps than `steps` where needed): a new
    site's k labelled documents are all seen, whatever k is."""
    lm = loaded_model(recipe)
    schema = load_schema(recipe.schema_name)
    examples = []
    for site in sites:
        examples += build_site_examples(recipe, lm, site.train, site.spec, schema).examples
    steps = max(steps, steps_for_epochs(len(examples), recipe.train.batch_size, epochs))
    load_adapter_state(lm.model, start if start is not None else initial_adapter(recipe))
    stats = train_on(recipe, examples, start_step=0, total_steps=steps, steps=steps, seed=seed)
    return adapter_state(lm.model), stats


def steps_for_epochs(examples: int, batch_size: int, epochs: float) -> int:
    """Optimizer steps that show every example `epochs` times (0 when epochs is 0)."""
    return math.ceil(epochs * examples / batch_size) if epochs > 0 else 0


def sample_documents(docs: Sequence[Document], k: int, seed: int) -> list[Document]:
    """k documents chosen with a seed: the labelled data a new site has."""
    ranked = list(docs)
    random.Random(seed).shuffle(ranked)
    return ranked[:k]


def load_peft_adapter(folder: str | Path, model=None) -> State:
    """Adapter tensors of a saved PEFT adapter (as the federation writes it). A FedEx-LoRA
    adapter's base residual is added to `model`'s frozen weights; without a model such an
    adapter is refused, since its tensors alone are not the federated model."""
    from safetensors.torch import load_file

    from fedmedlora.model.lora import BASE_RESIDUAL, apply_base_residual

    if model is not None:
        apply_base_residual(model, folder)
    elif (Path(folder) / BASE_RESIDUAL).is_file():
        raise ValueError(
            f"{folder}: a FedEx-LoRA adapter ({BASE_RESIDUAL}): its base residual must be "
            "applied to the model it is loaded into"
        )
    return dict(load_file(Path(folder) / "adapter_model.safetensors"))


def personalize(
    site: SiteRecipe, start: State, *, head_steps: int, full_steps: int
) -> tuple[State, list[TrainStats]]:
    """LP-FT (Kumar et al., 2022) on a LoRA adapter: `head_steps` with every lora_A frozen
    (B and any task head adapt to the site while the shared features stay put), then
    `full_steps` on every adapter weight, one learning-rate schedule over both phases.
    Tuning everything at once from the start distorts the shared features first."""
    from fedmedlora.model.lora import frozen_parameter

    total = head_steps + full_steps
    if total < 1:
        raise ValueError("personalization needs at least one step")
    state, stats = dict(start), []
    if head_steps:
        state, s1 = site.train(state, 1, total, head_steps, freeze=frozen_parameter, start_step=0)
        stats.append(s1)
    if full_steps:
        state, s2 = site.train(state, 1, total, full_steps, start_step=head_steps)
        stats.append(s2)
    return state, stats
