"""Extraction with a (possibly adapted) causal LM: chunk, prompt, batched greedy
generation, parse, reassemble. The `extract` command, federated evaluation and every
baseline go through this one path.

Generation is copy-constrained by default (`evaluation.decoding`): the output is always
the window's text with tags inserted, and copy speculation checks several copied tokens
per forward pass. `constrained: false` is plain greedy decoding (`model.generate`), kept
for comparison."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedmedlora.data.chunking import Chunk, assemble
from fedmedlora.data.document import Document
from fedmedlora.data.schema import Schema
from fedmedlora.evaluation.decoding import DecodeStats, constrained_generate
from fedmedlora.model.loading import autocast
from fedmedlora.model.lora import merged_lora
from fedmedlora.task.markup import parse
from fedmedlora.task.markup_grammar import MarkupGrammar
from fedmedlora.task.prompt import PromptStyle, chunk_for, prompt_ids


class GenerationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(256, ge=8)
    # Markup is the text plus tags; this bounds a run-away (e.g. zero-shot) output.
    # Constrained decoding always has room to copy the whole text: its cap is the text's
    # bytes plus this budget, which then only bounds the tags.
    length_factor: float = Field(2.5, gt=1)
    constrained: bool = Field(
        True, description="copy-constrained decoding: output = window text + valid tags"
    )
    speculate_tokens: int = Field(
        8, ge=0, le=64, description="copy speculation: text tokens checked per pass (0: off)"
    )
    merge_adapter: bool = Field(
        True, description="fold LoRA into the base weights while generating (restored exactly)"
    )


# The inference measurements each evaluation reports (client_app -> results.json); one
# place, so that egress allow-lists can name them.
INFERENCE_METRICS = (
    "eval-seconds",
    "eval-chunks",
    "eval-generated-tokens",
    "eval-forward-passes",
    "eval-windows-per-second",
    "eval-forward-passes-per-token",
)


@dataclass
class ExtractionStats:
    chunks: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    issues: Counter[str] = field(default_factory=Counter)
    # Forward passes each window took part in, summed (1 per token for greedy decoding;
    # batched greedy also counts the steps a finished window waits for its batch).
    forward_passes: int = 0
    # What the decoder computed, in token columns (`DecodeStats`; greedy `generate` is
    # counted but not timed per pass).
    decoding: DecodeStats = field(default_factory=DecodeStats)

    @property
    def windows_per_second(self) -> float:
        return self.chunks / self.seconds if self.seconds > 0 else 0.0

    @property
    def forward_passes_per_token(self) -> float:
        return self.forward_passes / self.generated_tokens if self.generated_tokens else 0.0

    def metrics(self) -> dict[str, float]:
        """INFERENCE_METRICS, numbers only."""
        values = (
            self.seconds,
            self.chunks,
            self.generated_tokens,
            self.forward_passes,
            self.windows_per_second,
            self.forward_passes_per_token,
        )
        return dict(zip(INFERENCE_METRICS, values, strict=True))


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, width - len(s) :] = torch.tensor(s)
        mask[row, width - len(s) :] = 1
    return ids, mask


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[list[int]],
    budgets: list[int],
    settings: GenerationSettings,
    device: torch.device,
    precision: str,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[str], DecodeStats]:
    """Greedy outputs for each prompt, batched by length to limit padding; also the
    tokens produced, the forward passes each window took part in and the columns
    computed (`generate` feeds every row of a batch, finished or not, at every step)."""
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), budgets[i]))
    outputs: list[str] = [""] * len(prompts)
    stats = DecodeStats()
    pad = tokenizer.pad_token_id
    for start in range(0, len(order), settings.batch_size):
        idx = order[start : start + settings.batch_size]
        ids, mask = _left_pad([prompts[i] for i in idx], pad)
        budget = min(settings.max_new_tokens, max(budgets[i] for i in idx))
        with autocast(precision, device):
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=budget,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=pad,
            )
        new = out[:, ids.shape[1] :].cpu()
        stats.window_forwards += new.shape[0] * new.shape[1]
        real = int(mask.sum())
        stats.columns += ids.numel() + new.shape[0] * (new.shape[1] - 1)
        stats.prompt_tokens += real
        fed = (new[:, :-1] != pad) & (new[:, :-1] != tokenizer.eos_token_id)
        stats.padded_columns += ids.numel() - real + int((~fed).sum())
        stats.model_calls += new.shape[1]
        for row, i in enumerate(idx):
            tokens = new[row]
            keep = tokens[(tokens != pad) & (tokens != tokenizer.eos_token_id)]
            stats.generated_tokens += int(keep.numel())
            outputs[i] = tokenizer.decode(keep, skip_special_tokens=True)
        if on_batch:
            on_batch(len(idx))
    return outputs, stats


def extract(
    model,
    tokenizer,
    docs: Sequence[Document],
    entity_types: list[str],
    schema: Schema,
    *,
    max_chunk_tokens: int,
    settings: GenerationSettings,
    device: torch.device,
    precision: str,
    style: PromptStyle = PromptStyle(),
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[Document], ExtractionStats]:
    """Predicted annotations (only `entity_types`) for each document."""
    began = time.perf_counter()
    stats = ExtractionStats()
    work: list[tuple[int, Chunk]] = []
    prompts: list[list[int]] = []
    budgets: list[int] = []
    grammars: list[MarkupGrammar] = []
    for d, doc in enumerate(docs):
        for ch in chunk_for(doc, tokenizer, max_chunk_tokens):
            work.append((d, ch))
            prompts.append(prompt_ids(tokenizer, ch.text, entity_types, schema, style))
            n_text = len(tokenizer(ch.text, add_special_tokens=False)["input_ids"])
            budgets.append(int(settings.length_factor * n_text) + 24)
            if settings.constrained:
                grammars.append(MarkupGrammar(ch.text, entity_types, schema))
                tags = min(settings.max_new_tokens, budgets[-1])
                budgets[-1] = grammars[-1].token_budget(tags)
    with merged_lora(model) if settings.merge_adapter else nullcontext():
        if settings.constrained and work:
            outputs, decoded = constrained_generate(
                model,
                tokenizer,
                prompts,
                grammars,
                budgets,
                batch_size=settings.batch_size,
                speculate_tokens=settings.speculate_tokens,
                device=device,
                precision=precision,
                on_batch=on_batch,
            )
        elif work:
            outputs, decoded = generate(
                model, tokenizer, prompts, budgets, settings, device, precision, on_batch
            )
        else:
            outputs, decoded = [], DecodeStats()
    stats.generated_tokens = decoded.generated_tokens
    stats.forward_passes = decoded.window_forwards
    stats.decoding = decoded
    per_doc: list[list] = [[] for _ in docs]
    for (d, ch), text in zip(work, outputs, strict=True):
        parsed = parse(text, ch.text, schema, entity_types)
        stats.issues.update(parsed.issues)
        per_doc[d].append((ch, parsed.entities, parsed.relations))
    stats.chunks = len(work)
    stats.seconds = time.perf_counter() - began
    return [assemble(doc, preds) for doc, preds in zip(docs, per_doc, strict=True)], stats
