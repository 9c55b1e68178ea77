"""Extraction with the encoder baseline: windows -> BIO tags (restricted to the requested
types) -> entities -> nearest-entity relations -> documents."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from fedmedlora.data.chunking import assemble, chunk_document
from fedmedlora.data.document import Document
from fedmedlora.data.schema import Schema
from fedmedlora.evaluation.inference import ExtractionStats
from fedmedlora.model.loading import autocast
from fedmedlora.task.prompt import token_length
from fedmedlora.task.tagging import LabelSet, decode, encode, link_nearest


@torch.no_grad()
def tag(
    model,
    tokenizer,
    docs: Sequence[Document],
    entity_types: list[str],
    relation_types: list[str],
    schema: Schema,
    *,
    window_tokens: int,
    batch_size: int,
    device: torch.device,
    precision: str,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[Document], ExtractionStats]:
    began = time.perf_counter()
    labels = LabelSet.for_schema(schema)
    allowed = labels.allowed(entity_types).to(device)
    length = token_length(tokenizer)
    work = []
    for d, doc in enumerate(docs):
        for ch in chunk_document(
            doc.model_copy(update={"entities": [], "relations": []}), window_tokens, length
        ).chunks:
            work.append((d, ch, encode(ch.text, [], tokenizer, labels, window_tokens + 16)))
    per_doc: list[list] = [[] for _ in docs]
    for start in range(0, len(work), batch_size):
        part = work[start : start + batch_size]
        width = max(len(enc.input_ids) for _, _, enc in part)
        ids = torch.full((len(part), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (_, _, enc) in enumerate(part):
            ids[row, : len(enc.input_ids)] = torch.tensor(enc.input_ids)
            mask[row, : len(enc.input_ids)] = 1
        with autocast(precision, device):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        logits = logits.float().masked_fill(~allowed, float("-inf"))
        best = logits.argmax(-1).cpu()
        for row, (d, ch, enc) in enumerate(part):
            tags = best[row, : len(enc.input_ids)].tolist()
            ents = decode(enc.offsets, tags, ch.text, labels)
            per_doc[d].append((ch, ents, link_nearest(ents, schema, relation_types)))
        if on_batch:
            on_batch(len(part))
    preds = [assemble(doc, p) for doc, p in zip(docs, per_doc, strict=True)]
    return preds, ExtractionStats(chunks=len(work), seconds=time.perf_counter() - began)
