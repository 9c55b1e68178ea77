"""The encoder baseline's task: BIO token tags over the schema's entity types, and a
nearest-compatible-entity rule for relations.

A token classifier cannot express nesting: where gold mentions nest or overlap, the
longest one is kept (counted by `TagEncoding.dropped`). It predicts no relations either;
the rule links each modifier to the nearest main entity the schema lets it modify, the
usual pipeline fallback, so the baseline still has relation scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedmedlora.data.document import Entity, Relation
from fedmedlora.data.schema import Schema

IGNORE = -100


@dataclass(frozen=True)
class LabelSet:
    types: tuple[str, ...]

    @classmethod
    def for_schema(cls, schema: Schema) -> LabelSet:
        return cls(tuple(schema.entity_types))

    @property
    def labels(self) -> list[str]:
        return ["O"] + [f"{p}-{t}" for t in self.types for p in ("B", "I")]

    def __len__(self) -> int:
        return 1 + 2 * len(self.types)

    def begin(self, entity_type: str) -> int:
        return 1 + 2 * self.types.index(entity_type)

    def allowed(self, entity_types: list[str]) -> torch.Tensor:
        """Labels a site can assign: O and the B/I tags of the types it annotates. Masking
        the rest keeps a site's "O" from teaching that its unannotated types are absent."""
        mask = torch.zeros(len(self), dtype=torch.bool)
        mask[0] = True
        for t in entity_types:
            mask[self.begin(t)] = mask[self.begin(t) + 1] = True
        return mask


@dataclass
class TagEncoding:
    input_ids: list[int]
    labels: list[int]
    offsets: list[tuple[int, int]]
    dropped: int = 0


def flat_entities(entities: list[Entity]) -> tuple[list[Entity], int]:
    """Non-overlapping entities, longest first; returns them and how many were dropped."""
    kept: list[Entity] = []
    for e in sorted(entities, key=lambda e: (-(e.end - e.start), e.start, e.type)):
        if all(e.end <= k.start or k.end <= e.start for k in kept):
            kept.append(e)
    return sorted(kept, key=lambda e: e.start), len(entities) - len(kept)


def encode(
    text: str, entities: list[Entity], tokenizer, labels: LabelSet, max_tokens: int = 512
) -> TagEncoding:
    enc = tokenizer(text, return_offsets_mapping=True, truncation=True, max_length=max_tokens)
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    tags = [IGNORE if s == e else 0 for s, e in offsets]  # special tokens carry no label
    flat, dropped = flat_entities(entities)
    for ent in flat:
        first = True
        for i, (s, e) in enumerate(offsets):
            if s == e or e <= ent.start or s >= ent.end:
                continue
            tags[i] = labels.begin(ent.type) + (0 if first else 1)
            first = False
    return TagEncoding(enc["input_ids"], tags, offsets, dropped)


def decode(
    offsets: list[tuple[int, int]], tags: list[int], text: str, labels: LabelSet
) -> list[Entity]:
    """Entities from BIO tags; an I- tag that does not continue its type starts a mention."""
    spans: list[list] = []  # [type, start, end]
    for (s, e), tag in zip(offsets, tags, strict=True):
        if s == e or tag <= 0:
            if tag == 0:
                spans.append([None, 0, 0])  # break
            continue
        etype = labels.types[(tag - 1) // 2]
        inside = (tag - 1) % 2 == 1
        if inside and spans and spans[-1][0] == etype:
            spans[-1][2] = e
        else:
            spans.append([etype, s, e])
    out: list[Entity] = []
    for etype, s, e in spans:
        if etype is None:
            continue
        out.append(Entity(id=f"T{len(out) + 1}", type=etype, start=s, end=e, text=text[s:e]))
    return out


def link_nearest(
    entities: list[Entity], schema: Schema, relation_types: list[str]
) -> list[Relation]:
    """Each modifier -> the closest main entity it may modify (by character distance)."""
    rel = schema.default_relation
    if rel is None or rel not in relation_types:
        return []
    mains = [e for e in entities if schema.is_main(e.type)]
    out: list[Relation] = []
    for mod in entities:
        if not schema.is_modifier(mod.type):
            continue
        options = [m for m in mains if schema.can_modify(mod.type, m.type)]
        if not options:
            continue
        target = min(options, key=lambda m: (max(m.start - mod.end, mod.start - m.end, 0), m.start))
        out.append(Relation(id=f"R{len(out) + 1}", type=rel, head=mod.id, tail=target.id))
    return out
