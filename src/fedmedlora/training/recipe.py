"""The local recipe of one site, reusable with or without Flower: load the shared base
model once per process, put an adapter in, train it on the site's examples, evaluate it
on the site's test documents. Federated clients, single-site and centralized baselines
all run these same steps."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import cached_property

import torch

from fedmedlora.config import Recipe
from fedmedlora.data.schema import Schema, load_schema
from fedmedlora.data.sites import SiteData
from fedmedlora.evaluation.inference import ExtractionStats, extract
from fedmedlora.evaluation.metrics import Scores, score_corpus
from fedmedlora.model.loading import (
    load_causal_lm,
    load_tokenizer,
    pick_device,
    resolve_precision,
)
from fedmedlora.model.lora import adapter_state, add_lora, load_adapter_state
from fedmedlora.task.prompt import PromptStyle
from fedmedlora.training.examples import ExampleSet, build_examples
from fedmedlora.training.loop import TrainStats, train_steps


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    device: torch.device
    precision: str


_MODELS: dict[tuple, LoadedModel] = {}


def loaded_model(recipe: Recipe) -> LoadedModel:
    """The adapted model for this recipe, loaded once per process and shared by every site
    this process serves (the base is frozen; adapter weights are loaded per message)."""
    key = (
        recipe.model.name,
        recipe.model.device,
        recipe.model.precision,
        recipe.lora.model_dump_json(),
        recipe.seed,
    )
    if key not in _MODELS:
        if recipe.threads:
            torch.set_num_threads(recipe.threads)
        device = pick_device(recipe.model.device)
        tokenizer = load_tokenizer(recipe.model.name)
        model = add_lora(load_causal_lm(recipe.model.name, device), recipe.lora, seed=recipe.seed)
        _MODELS[key] = LoadedModel(
            model, tokenizer, device, resolve_precision(recipe.model.precision, device)
        )
    return _MODELS[key]


def initial_adapter(recipe: Recipe) -> dict[str, torch.Tensor]:
    """The round-0 global adapter: seeded A, zero B, so it equals the base model."""
    return adapter_state(loaded_model(recipe).model)


@dataclass
class SiteRecipe:
    recipe: Recipe
    site: SiteData
    extra_seed: int = 0
    _examples: ExampleSet | None = field(default=None, repr=False)

    @cached_property
    def schema(self) -> Schema:
        return load_schema(self.recipe.schema_name)

    @property
    def lm(self) -> LoadedModel:
        return loaded_model(self.recipe)

    @property
    def examples(self) -> ExampleSet:
        if self._examples is None:
            self._examples = build_examples(
                self.site.train,
                self.site.spec,
                self.schema,
                self.lm.tokenizer,
                self.recipe.task.max_chunk_tokens,
                self.recipe.task.max_length,
            )
        return self._examples

    def _seed(self, server_round: int) -> int:
        return zlib.crc32(
            f"{self.recipe.seed}:{self.site.spec.name}:{server_round}:{self.extra_seed}".encode()
        )

    def train(
        self,
        state: dict[str, torch.Tensor],
        server_round: int,
        total_steps: int,
        steps: int | None = None,
    ) -> tuple[dict[str, torch.Tensor], TrainStats]:
        """Start from `state`, train one round's local steps, return the new adapter."""
        lm = self.lm
        load_adapter_state(lm.model, state)
        steps = self.recipe.train.local_steps if steps is None else steps
        stats = train_steps(
            lm.model,
            self.examples.examples,
            self.recipe.train,
            pad_id=lm.tokenizer.pad_token_id,
            start_step=(server_round - 1) * steps,
            total_steps=total_steps,
            seed=self._seed(server_round),
            device=lm.device,
            precision=lm.precision,
            steps=steps,
        )
        return adapter_state(lm.model), stats

    def evaluate(
        self, state: dict[str, torch.Tensor] | None, zero_shot_prompt: bool = False, on_batch=None
    ) -> tuple[Scores, ExtractionStats]:
        """Scores on the site's test documents, counting only the types it annotates.
        `state=None` keeps whatever adapter is loaded."""
        lm = self.lm
        if state is not None:
            load_adapter_state(lm.model, state)
        spec = self.site.spec
        style = PromptStyle(zero_shot=zero_shot_prompt)
        preds, stats = extract(
            lm.model,
            lm.tokenizer,
            self.site.test,
            spec.entity_types,
            self.schema,
            max_chunk_tokens=self.recipe.task.max_chunk_tokens,
            settings=self.recipe.generation,
            device=lm.device,
            precision=lm.precision,
            style=style,
            on_batch=on_batch,
        )
        scores, _ = score_corpus(self.site.test, preds, spec.entity_types, spec.relation_types)
        return scores, stats
