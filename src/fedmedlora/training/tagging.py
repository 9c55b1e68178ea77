"""Training examples, batches and loss for the encoder (token classification) baseline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedmedlora.data.chunking import chunk_document
from fedmedlora.data.document import Document
from fedmedlora.data.schema import Schema
from fedmedlora.data.site import SiteSpec
from fedmedlora.task.prompt import token_length
from fedmedlora.task.tagging import IGNORE, LabelSet, encode
from fedmedlora.training.examples import ExampleSet


@dataclass(frozen=True)
class TagExample:
    input_ids: list[int]
    labels: list[int]
    allowed: torch.Tensor  # which labels this example's site can assign

    def __len__(self) -> int:
        return len(self.input_ids)


def build_tag_examples(
    docs: Sequence[Document], site: SiteSpec, schema: Schema, tokenizer, window_tokens: int
) -> ExampleSet:
    labels = LabelSet.for_schema(schema)
    allowed = labels.allowed(site.entity_types)
    out = ExampleSet()
    length = token_length(tokenizer)
    for doc in docs:
        for ch in chunk_document(site.restrict(doc), window_tokens, length).chunks:
            enc = encode(ch.text, ch.entities, tokenizer, labels, window_tokens + 16)
            out.dropped_entities += enc.dropped
            out.examples.append(TagExample(enc.input_ids, enc.labels, allowed))
            out.chunks += 1
    return out


def collate_tags(batch: Sequence[TagExample], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ex) for ex in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, ex in enumerate(batch):
        ids[row, : len(ex)] = torch.tensor(ex.input_ids)
        labels[row, : len(ex)] = torch.tensor(ex.labels)
        mask[row, : len(ex)] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "allowed": torch.stack([ex.allowed for ex in batch]),
    }


def tagging_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Token cross-entropy over the labels each example's site can assign."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits.float().masked_fill(~batch["allowed"][:, None, :], float("-inf"))
    labels = batch["labels"]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE
    )
