"""The local recipe of one site, reusable with or without Flower: load the shared base
model once per process, put an adapter in, train it on the site's examples, evaluate it
on the site's test documents. Federated clients, single-site and centralized baselines
all run these same steps, for either task (`model.task`): generative (a causal LM writes
markup, Fed-MedLoRA) or tagging (an encoder tags tokens, the BERT baseline)."""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial

import torch

from fedmedlora.data.document import Document
from fedmedlora.data.schema import Schema, load_schema
from fedmedlora.data.site import SiteSpec
from fedmedlora.data.sites import SiteData, split_documents
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
from fedmedlora.recipe.settings import Recipe
from fedmedlora.task.prompt import PromptStyle
from fedmedlora.task.tagging import LabelSet
from fedmedlora.training.examples import ExampleSet, build_examples
from fedmedlora.training.loop import TrainStats, mean_loss, train_steps
from fedmedlora.training.proximal import proximal_term
from fedmedlora.training.tagging import build_tag_examples, collate_tags, tagging_loss


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    device: torch.device
    precision: str
    # The seeded round-0 adapter, kept because training changes the model in place and
    # FFA-LoRA needs the shared initial A long after.
    initial: dict[str, torch.Tensor] = field(default_factory=dict)


_MODELS: dict[tuple, LoadedModel] = {}


def loaded_model(recipe: Recipe) -> LoadedModel:
    """The adapted model for this recipe, loaded once per process and shared by every site
    this process serves (the base is frozen; adapter weights are loaded per message)."""
    key = (
        recipe.model.model_dump_json(),
        recipe.train.gradient_checkpointing,
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
            m = recipe.model
            base = load_causal_lm(
                m.name,
                device,
                dtype=m.dtype,
                quantization=m.quantization,
                attention=m.attention,
                device_map=m.device_map,
                gradient_checkpointing=recipe.train.gradient_checkpointing,
            )
            model = add_lora(base, recipe.lora, seed=recipe.seed)
        _MODELS[key] = LoadedModel(
            model,
            tokenizer,
            device,
            resolve_precision(recipe.model.precision, device),
            initial=adapter_state(model),
        )
    return _MODELS[key]


def initial_adapter(recipe: Recipe) -> dict[str, torch.Tensor]:
    """The round-0 global adapter: seeded A, zero B (the base model itself), plus the
    seeded classification head for the tagging task."""
    return {k: v.clone() for k, v in loaded_model(recipe).initial.items()}


def build_site_examples(
    recipe: Recipe, lm: LoadedModel, docs: Sequence[Document], spec: SiteSpec, schema: Schema
) -> ExampleSet:
    if recipe.model.task == "tagging":
        return build_tag_examples(
            docs, spec, schema, lm.tokenizer, recipe.task.tagger_window_tokens
        )
    return build_examples(
        docs,
        spec,
        schema,
        lm.tokenizer,
        recipe.task.max_chunk_tokens,
        recipe.task.max_length,
        mask_unannotated=recipe.train.mask_unannotated_types,
    )


def _task_fns(recipe: Recipe) -> dict:
    if recipe.model.task == "tagging":
        return {"collate_fn": collate_tags, "loss_fn": tagging_loss}
    return {}


def train_on(
    recipe: Recipe,
    examples: Sequence,
    *,
    start_step: int,
    total_steps: int,
    steps: int,
    seed: int,
    regularizer: Callable[[], torch.Tensor] | None = None,
) -> TrainStats:
    """Train the loaded model's adapter in place on `examples` (of any site or sites)."""
    lm = loaded_model(recipe)
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
        regularizer=regularizer,
        **_task_fns(recipe),
    )


def validation_loss(recipe: Recipe, examples: Sequence) -> float:
    """Loss of the loaded model (with its current adapter) on held-out examples."""
    lm = loaded_model(recipe)
    return mean_loss(
        lm.model,
        examples,
        pad_id=lm.tokenizer.pad_token_id,
        batch_size=recipe.generation.batch_size,
        device=lm.device,
        precision=lm.precision,
        **_task_fns(recipe),
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
    """One site's training and evaluation, as its Flower client runs them.

    With `train.validation_fraction` > 0 a seeded share of the site's training documents
    is held out (never trained on) to report a validation loss: Fed-MedLoRA+ weights
    sites by it when the server holds no data of its own.
    """

    recipe: Recipe
    site: SiteData
    extra_seed: int = 0
    keep_dir: str | None = None  # the site's own folder for what never leaves it

    @property
    def lm(self) -> LoadedModel:
        return loaded_model(self.recipe)

    @cached_property
    def _parts(self) -> tuple[ExampleSet, ExampleSet]:
        """(training examples, validation examples), built once."""
        docs, held = list(self.site.train), []
        fraction = self.recipe.train.validation_fraction
        seed = zlib.crc32(f"{self.recipe.seed}:{self.site.spec.name}:validation".encode())
        if fraction > 0 and len(docs) > 1:
            docs, held = split_documents(docs, fraction, seed)
            if not docs:  # a fraction that rounds to every document: keep one to train on
                docs, held = held[:1], held[1:]
        schema = load_schema(self.recipe.schema_name)

        def build(some: Sequence[Document]) -> ExampleSet:
            return build_site_examples(self.recipe, self.lm, some, self.site.spec, schema)

        validation = build(held) if held else ExampleSet()
        cap = self.recipe.train.validation_max_examples
        if len(validation.examples) > cap:
            keep = sorted(random.Random(seed).sample(range(len(validation.examples)), cap))
            validation.examples = [validation.examples[i] for i in keep]
        return build(docs), validation

    @property
    def examples(self) -> ExampleSet:
        return self._parts[0]

    @property
    def validation(self) -> ExampleSet:
        return self._parts[1]

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
        *,
        freeze: Callable[[str], bool] | None = None,
        proximal_mu: float | None = None,
        start_step: int | None = None,
    ) -> tuple[dict[str, torch.Tensor], TrainStats]:
        """Start from `state`, train one round's local steps, return the new adapter.

        `freeze(name)` keeps matching adapter parameters fixed (FFA-LoRA freezes every
        lora_A); `proximal_mu` > 0 (default: the recipe's `train.proximal_mu`) adds
        FedProx's term pulling towards `state`.
        """
        if proximal_mu is None:
            proximal_mu = self.recipe.train.proximal_mu
        model = self.lm.model
        load_adapter_state(model, state)
        steps = self.recipe.train.local_steps if steps is None else steps
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        frozen = [p for n, p in trainable.items() if freeze is not None and freeze(n)]
        regularizer = None
        if proximal_mu > 0:
            live = {n: p for n, p in trainable.items() if freeze is None or not freeze(n)}
            anchor = {n: p.detach().clone() for n, p in live.items()}
            regularizer = partial(proximal_term, live, anchor, proximal_mu)
        for p in frozen:
            p.requires_grad_(False)
        # Dropout draws from torch's generator: seeded per (run, site, round), so a round
        # gives the same adapter in any process (a resumed run, another Ray actor).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed(server_round))
            try:
                stats = train_on(
                    self.recipe,
                    self.examples.examples,
                    start_step=(server_round - 1) * steps if start_step is None else start_step,
                    total_steps=total_steps,
                    steps=steps,
                    seed=self.seed(server_round),
                    regularizer=regularizer,
                )
            finally:
                for p in frozen:
                    p.requires_grad_(True)
        return adapter_state(model), stats

    def validation_loss(self, state: dict[str, torch.Tensor] | None = None) -> float:
        """Loss on the held-out validation documents (`state=None`: the loaded adapter)."""
        if state is not None:
            load_adapter_state(self.lm.model, state)
        return validation_loss(self.recipe, self.validation.examples)

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
