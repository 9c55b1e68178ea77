"""Label noise on purpose: a site whose annotators disagree with everyone else, for
robustness experiments (Fed-MedLoRA+ should trust it less). Only training documents
are touched; a site's test split stays clean so its scores stay comparable."""

from __future__ import annotations

import random
from collections.abc import Sequence

from fedmedlora.data.document import Document


def corrupt_entity_types(
    docs: Sequence[Document], fraction: float, types: Sequence[str], seed: int
) -> tuple[list[Document], int]:
    """Reassign a seeded `fraction` of the entities (those of `types`) to a different type
    of `types`, chosen uniformly. Returns the new documents and how many labels changed."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    types = sorted(set(types))
    where = [
        (i, j) for i, d in enumerate(docs) for j, e in enumerate(d.entities) if e.type in types
    ]
    if fraction == 0 or not where or len(types) < 2:
        return list(docs), 0
    rng = random.Random(f"corrupt:{seed}")
    chosen = rng.sample(where, round(fraction * len(where)))
    new_type: dict[tuple[int, int], str] = {}
    for i, j in sorted(chosen):
        old = docs[i].entities[j].type
        new_type[(i, j)] = rng.choice([t for t in types if t != old])
    out = []
    for i, d in enumerate(docs):
        if not any((i, j) in new_type for j in range(len(d.entities))):
            out.append(d)
            continue
        entities = [
            e.model_copy(update={"type": new_type[(i, j)]}) if (i, j) in new_type else e
            for j, e in enumerate(d.entities)
        ]
        out.append(d.model_copy(update={"entities": entities}))
    return out, len(new_type)
