"""Documents -> (prompt, target) token sequences for supervised fine-tuning.

The target is the chunk's markup followed by the end-of-turn token, so the model learns
both the markup and when to stop; loss is computed on the target only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from fedmedlora.data.document import Document
from fedmedlora.data.schema import Schema
from fedmedlora.data.site import SiteSpec
from fedmedlora.task.chunking import Chunk, chunk_document
from fedmedlora.task.markup import serialize
from fedmedlora.task.prompt import PromptStyle, messages


@dataclass(frozen=True)
class Example:
    prompt_ids: list[int]
    target_ids: list[int]

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.target_ids)


@dataclass
class ExampleSet:
    examples: list[Example] = field(default_factory=list)
    chunks: int = 0
    dropped_entities: int = 0
    dropped_relations: int = 0
    truncated: int = 0


def token_length(tokenizer):
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(
    tokenizer,
    text: str,
    entity_types: list[str],
    schema: Schema,
    style: PromptStyle = PromptStyle(),
) -> list[int]:
    rendered = tokenizer.apply_chat_template(
        messages(text, entity_types, schema, style), add_generation_prompt=True, tokenize=False
    )
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def chunk_for(doc: Document, tokenizer, max_chunk_tokens: int) -> list[Chunk]:
    return chunk_document(doc, max_chunk_tokens, token_length(tokenizer)).chunks


def build_examples(
    docs: Sequence[Document],
    site: SiteSpec,
    schema: Schema,
    tokenizer,
    max_chunk_tokens: int = 64,
    max_length: int = 512,
    style: PromptStyle = PromptStyle(),
) -> ExampleSet:
    """One example per chunk, restricted to the types the site annotates."""
    out = ExampleSet()
    length = token_length(tokenizer)
    for doc in docs:
        restricted = site.restrict(doc)
        chunked = chunk_document(restricted, max_chunk_tokens, length)
        out.dropped_relations += chunked.cross_chunk_relations
        for ch in chunked.chunks:
            ser = serialize(ch.text, ch.entities, ch.relations, schema)
            out.dropped_entities += len(ser.dropped_entities)
            out.dropped_relations += len(ser.dropped_relations)
            p = prompt_ids(tokenizer, ch.text, site.entity_types, schema, style)
            t = tokenizer(ser.markup, add_special_tokens=False)["input_ids"]
            t.append(tokenizer.eos_token_id)
            if len(p) + len(t) > max_length:
                out.truncated += 1
                continue
            out.examples.append(Example(p, t))
            out.chunks += 1
    return out
