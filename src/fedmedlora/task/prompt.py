"""Prompts: the same wording for training, federated evaluation, baselines and `extract`,
so a score always measures the model, not a prompt mismatch."""

from __future__ import annotations

from dataclasses import dataclass

from fedmedlora.data.schema import Schema

# Short on purpose: every prompt token is paid for in every training step.
INSTRUCTION = (
    'Copy the text, tagging entities as <span class="TYPE">...</span>; '
    'main entities ({mains}) get id="N", modifiers ref="N" of the entity they modify. '
    "Types: {types}."
)


@dataclass(frozen=True)
class PromptStyle:
    """`definitions` adds one line per type: what the zero-shot baseline needs, and
    more tokens than a fine-tuned model needs."""

    definitions: bool = False


def messages(
    text: str, entity_types: list[str], schema: Schema, style: PromptStyle = PromptStyle()
) -> list[dict[str, str]]:
    """Chat messages asking for the markup of `text`, restricted to `entity_types`."""
    types = [t for t in schema.entity_types if t in set(entity_types)]
    mains = [t for t in types if schema.is_main(t)] or list(schema.main)
    system = INSTRUCTION.format(mains=", ".join(mains), types=", ".join(types))
    if style.definitions:
        system += "\n" + "\n".join(f"- {t}: {schema.definition(t)}" for t in types)
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]
