"""The local recipe of one site, reusable with or without Flower: load the shared base
model once per process, put an adapter in, train it on the site's examples, evaluate it
on the site's test documents. Federated clients, single-site and centralized baselines
all run these same steps, for either task (`model.task`): generative (a causal LM writes
markup, Fed-MedLoRA) or tagging (an encoder tags tokens, the BERT baseline)."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from fedmedlora.config import Recipe
from fedmedlora.data.document import Document
from fedmedlora.data.schema import Schema, load_schema
from fedmedlora.data.site import SiteSpec
from fedmedlora.data.sites import SiteData
from fedmedlora.evaluation.inference import ExtractionStats, extract
from fedmedlora.evaluation.metrics import Scores, score_corpus
from fedmedlora.model.loading import (
    load_causal_lm,
    load_token_classifier,
    load_tokenizer,
    pick_device,
    resolve_precision,
)
from fedmedlora.model.lora import adapter_state, add_lora, load_adapter_state
from fedmedlora.task.prompt import PromptStyle
from fedmedlora.task.tagging import LabelSet
from fedmedlora.training.examples import ExampleSet, build_examples
from fedmedlora.training.loop import TrainStats, train_steps
from fedmedlora.training.tagging import build_tag_examples, collate_tags, tagging_loss


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
        recipe.model.task,
        recipe.model.device,
        recipe.model.precision,
        recipe.lora.model_dump_json(),
        recipe.schema_name,
        recipe.seed,
    )
    if key not in _MODELS:
        if recipe.threads:
            torch.set_num_threads(recipe.threads)
        device = pick_device(recipe.model.device)
        tokenizer = load_tokenizer(recipe.model.name)
        if recipe.model.task == "tagging":
            labels = LabelSet.for_schema(load_schema(recipe.schema_name))
            base = load_token_classifier(recipe.model.name, len(labels), device, recipe.seed)
            model = add_lora(base, recipe.lora, task_type="TOKEN_CLS", seed=recipe.seed)
        else:
            base = load_causal_lm(recipe.model.name, device)
            model = add_lora(base, recipe.lora, seed=recipe.seed)
        _MODELS[key] = LoadedModel(
            model, tokenizer, device, resolve_precision(recipe.model.precision, device)
        )
    return _MODELS[key]


def initial_adapter(recipe: Recipe) -> dict[str, torch.Tensor]:
    """The round-0 global adapter: seeded A, zero B (the base model itself), plus the
    seeded classification head for the tagging task."""
    return adapter_state(loaded_model(recipe).model)


def build_site_examples(
    recipe: Recipe, lm: LoadedModel, docs: Sequence[Document], spec: SiteSpec, schema: Schema
) -> ExampleSet:
    if recipe.model.task == "tagging":
        return build_tag_examples(
            docs, spec, schema, lm.tokenizer, recipe.task.tagger_window_tokens
        )
    return build_examples(
        docs, spec, schema, lm.tokenizer, recipe.task.max_chunk_tokens, recipe.task.max_length
    )


def train_on(
    recipe: Recipe, examples: Sequence, *, start_step: int, total_steps: int, steps: int, seed: int
) -> TrainStats:
    """Train the loaded model's adapter in place on `examples` (of any site or sites)."""
    lm = loaded_model(recipe)
    task_fns = (
        {"collate_fn": collate_tags, "loss_fn": tagging_loss}
        if recipe.model.task == "tagging"
        else {}
    )
    return train_steps(
        lm.model,
        examples,
        recipe.train,
        pad_id=lm.tokenizer.pad_token_id,
        start_step=start_step,
        total_steps=total_steps,
        seed=seed,
        device=lm.device,
        precision=lm.precision,
        steps=steps,
        **task_fns,
    )


def predict(
    recipe: Recipe,
    docs: Sequence[Document],
    spec: SiteSpec,
    *,
    zero_shot_prompt: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[Document], ExtractionStats]:
    """Predictions of the loaded model (with its current adapter) for `spec`'s types."""
    lm = loaded_model(recipe)
    schema = load_schema(recipe.schema_name)
    if recipe.model.task == "tagging":
        from fedmedlora.evaluation.tagger import tag

        return tag(
            lm.model,
            lm.tokenizer,
            docs,
            spec.entity_types,
            spec.relation_types,
            schema,
            window_tokens=recipe.task.tagger_window_tokens,
            batch_size=recipe.generation.batch_size,
            device=lm.device,
            precision=lm.precision,
            on_batch=on_batch,
        )
    return extract(
        lm.model,
        lm.tokenizer,
        docs,
        spec.entity_types,
        schema,
        max_chunk_tokens=recipe.task.max_chunk_tokens,
        settings=recipe.generation,
        device=lm.device,
        precision=lm.precision,
        style=PromptStyle(zero_shot=zero_shot_prompt),
        on_batch=on_batch,
    )


def evaluate_on(
    recipe: Recipe,
    docs: Sequence[Document],
    spec: SiteSpec,
    *,
    zero_shot_prompt: bool = False,
    on_batch=None,
) -> tuple[Scores, ExtractionStats]:
    """Scores of the loaded model on `docs`, counting only the types `spec` annotates."""
    preds, stats = predict(recipe, docs, spec, zero_shot_prompt=zero_shot_prompt, on_batch=on_batch)
    scores, _ = score_corpus(docs, preds, spec.entity_types, spec.relation_types)
    return scores, stats


@dataclass
class SiteRecipe:
    """One site's training and evaluation, as its Flower client runs them."""

    recipe: Recipe
    site: SiteData
    extra_seed: int = 0
    _examples: ExampleSet | None = field(default=None, repr=False)

    @property
    def lm(self) -> LoadedModel:
        return loaded_model(self.recipe)

    @property
    def examples(self) -> ExampleSet:
        if self._examples is None:
            self._examples = build_site_examples(
                self.recipe,
                self.lm,
                self.site.train,
                self.site.spec,
                load_schema(self.recipe.schema_name),
            )
        return self._examples

    def seed(self, server_round: int) -> int:
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
        load_adapter_state(self.lm.model, state)
        steps = self.recipe.train.local_steps if steps is None else steps
        stats = train_on(
            self.recipe,
            self.examples.examples,
            start_step=(server_round - 1) * steps,
            total_steps=total_steps,
            steps=steps,
            seed=self.seed(server_round),
        )
        return adapter_state(self.lm.model), stats

    def evaluate(
        self, state: dict[str, torch.Tensor] | None, zero_shot_prompt: bool = False, on_batch=None
    ) -> tuple[Scores, ExtractionStats]:
        """Scores on the site's test documents (`state=None`: the adapter already loaded)."""
        if state is not None:
            load_adapter_state(self.lm.model, state)
        return evaluate_on(
            self.recipe,
            self.site.test,
            self.site.spec,
            zero_shot_prompt=zero_shot_prompt,
            on_batch=on_batch,
        )
