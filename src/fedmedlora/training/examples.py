"""Documents -> (prompt, target) token sequences for supervised fine-tuning.

The target is the chunk's markup followed by the end-of-turn token, so the model learns
both the markup and when to stop; loss is computed on the target only.

A site that annotates only some types still teaches, at each tag's type name, that the
other types are wrong there (cross-entropy pushes down every token but the gold one).
With `mask_unannotated` those tokens leave the softmax at type positions: the site says
which of *its* types a span is, nothing about the rest (docs/results.md, "unannotated
types", says why this is the cut that inline markup allows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from fedmedlora.data.chunking import chunk_document
from fedmedlora.data.document import Document
from fedmedlora.data.schema import Schema
from fedmedlora.data.site import SiteSpec
from fedmedlora.task.markup import CLASS_PREFIX, serialize, type_starts
from fedmedlora.task.prompt import PromptStyle, prompt_ids, token_length


@dataclass(frozen=True)
class Example:
    prompt_ids: list[int]
    target_ids: list[int]
    # Target indices where a type name starts, and the token ids the loss leaves out of
    # the softmax there (the unannotated types); empty unless masking is on.
    type_positions: tuple[int, ...] = ()
    excluded_ids: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.target_ids)


@dataclass
class ExampleSet:
    examples: list[Example] = field(default_factory=list)
    chunks: int = 0
    dropped_entities: int = 0
    dropped_relations: int = 0
    truncated: int = 0
    unmasked_type_positions: int = 0  # type names not starting on a token boundary


def type_first_tokens(tokenizer, types: Sequence[str]) -> dict[str, int]:
    """The token that starts each type's name after `class="`, as the tokenizer splits
    the markup (byte-level BPE keeps `="` apart from the name that follows)."""
    out: dict[str, int] = {}
    for t in types:
        text = CLASS_PREFIX + t + '"'
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        where = [i for i, (a, _) in enumerate(enc["offset_mapping"]) if a == len(CLASS_PREFIX)]
        if where:
            out[t] = enc["input_ids"][where[0]]
    return out


def excluded_type_tokens(tokenizer, site: SiteSpec, schema: Schema) -> tuple[int, ...]:
    """First tokens of the schema's types the site does not annotate, except any that
    also starts one of its own types (that choice is the site's to teach)."""
    first = type_first_tokens(tokenizer, schema.entity_types)
    own = {first[t] for t in site.entity_types if t in first}
    return tuple(sorted({i for t, i in first.items() if t not in site.entity_types} - own))


def _type_positions(tokenizer, markup: str) -> tuple[list[int], int]:
    """Token indices of the target where a type name starts, and how many type names
    start inside a token (left unmasked)."""
    enc = tokenizer(markup, add_special_tokens=False, return_offsets_mapping=True)
    starts = {a: i for i, (a, _) in enumerate(enc["offset_mapping"])}
    chars = type_starts(markup)
    found = [starts[c] for c in chars if c in starts]
    return found, len(chars) - len(found)


def build_examples(
    docs: Sequence[Document],
    site: SiteSpec,
    schema: Schema,
    tokenizer,
    max_chunk_tokens: int = 64,
    max_length: int = 512,
    style: PromptStyle = PromptStyle(),
    mask_unannotated: bool = False,
) -> ExampleSet:
    """One example per chunk, restricted to the types the site annotates."""
    out = ExampleSet()
    length = token_length(tokenizer)
    excluded = excluded_type_tokens(tokenizer, site, schema) if mask_unannotated else ()
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
            positions: list[int] = []
            if excluded:
                positions, missed = _type_positions(tokenizer, ser.markup)
                out.unmasked_type_positions += missed
            out.examples.append(Example(p, t, tuple(positions), excluded if positions else ()))
            out.chunks += 1
    return out
