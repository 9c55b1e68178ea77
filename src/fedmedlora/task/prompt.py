"""Prompts. One wording per purpose, shared by training, federated evaluation, the
baselines and `extract`, so a score always measures the model, not a prompt mismatch.

A fine-tuned model only needs to be told which types to tag (sites annotate different
subsets); every other prompt token is paid for in every training step. A model used
zero-shot also needs the instructions and a definition per type.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmedlora.data.chunking import Chunk, chunk_document
from fedmedlora.data.document import Document
from fedmedlora.data.schema import Schema

INSTRUCTION = (
    'Copy the text, tagging entities as <span class="TYPE">text</span>; main entities '
    '({mains}) get id="N", modifiers get ref="N" of the entity they modify.'
)


@dataclass(frozen=True)
class PromptStyle:
    """`zero_shot` adds the instructions and one definition per type."""

    zero_shot: bool = False


def messages(
    text: str, entity_types: list[str], schema: Schema, style: PromptStyle = PromptStyle()
) -> list[dict[str, str]]:
    """Chat messages asking for the markup of `text`, restricted to `entity_types`."""
    types = [t for t in schema.entity_types if t in set(entity_types)]
    system = "Types: " + ", ".join(types) + "."
    if style.zero_shot:
        mains = [t for t in types if schema.is_main(t)] or list(schema.main)
        system = "\n".join(
            [
                INSTRUCTION.format(mains=", ".join(mains)),
                system,
                *(f"- {t}: {schema.definition(t)}" for t in types),
            ]
        )
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


def prompt_ids(
    tokenizer,
    text: str,
    entity_types: list[str],
    schema: Schema,
    style: PromptStyle = PromptStyle(),
) -> list[int]:
    """The chat-templated prompt of `text` as tokens: the same in training and inference."""
    rendered = tokenizer.apply_chat_template(
        messages(text, entity_types, schema, style), add_generation_prompt=True, tokenize=False
    )
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def token_length(tokenizer):
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def chunk_for(doc: Document, tokenizer, max_chunk_tokens: int) -> list[Chunk]:
    """The windows of `doc` a prompt holds: at most `max_chunk_tokens` tokens of note text."""
    return chunk_document(doc, max_chunk_tokens, token_length(tokenizer)).chunks
