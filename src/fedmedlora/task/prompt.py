"""Prompts. One wording per purpose, shared by training, federated evaluation, the
baselines and `extract`, so a score always measures the model, not a prompt mismatch.

A fine-tuned model only needs to be told which types to tag (sites annotate different
subsets); every other prompt token is paid for in every training step. A model used
zero-shot also needs the instructions and a definition per type.
"""

from __future__ import annotations

from dataclasses import dataclass

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
