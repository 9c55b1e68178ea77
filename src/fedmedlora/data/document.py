"""The annotation model shared by every reader, writer, metric and the markup format.

Offsets are character offsets into `Document.text`, end exclusive (Python slicing).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Entity(BaseModel):
    """A typed mention. Discontinuous mentions (brat) keep their pieces in `fragments`;
    `start`/`end` then span from the first piece to the last and `text` joins the pieces
    with single spaces, as brat does."""

    # extra="forbid" everywhere: a misspelled key ("entites") is an error, not lost data.
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    type: str = Field(min_length=1)
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    text: str
    fragments: tuple[tuple[int, int], ...] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Entity:
        if self.end <= self.start:
            raise ValueError(f"entity {self.id}: end {self.end} must be after start {self.start}")
        if self.fragments is not None:
            if not self.fragments:
                raise ValueError(f"entity {self.id}: fragments, when given, cannot be empty")
            if self.fragments[0][0] != self.start or self.fragments[-1][1] != self.end:
                raise ValueError(f"entity {self.id}: fragments must start at start and end at end")
            for (_, e1), (s2, _) in pairwise(self.fragments):
                if e1 > s2:
                    raise ValueError(f"entity {self.id}: fragments overlap or are out of order")
            if any(e <= s for s, e in self.fragments):
                raise ValueError(f"entity {self.id}: empty fragment")
        return self

    @property
    def spans(self) -> tuple[tuple[int, int], ...]:
        return self.fragments or ((self.start, self.end),)

    def expected_text(self, doc_text: str) -> str:
        return " ".join(doc_text[s:e] for s, e in self.spans)


class Relation(BaseModel):
    """A directed link; in the clinical schema `head` is the modifier, `tail` the main entity."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    type: str = Field(min_length=1)
    head: str = Field(min_length=1)
    tail: str = Field(min_length=1)


class Document(BaseModel):
    """One note (or note chunk) with its gold or predicted annotations."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    text: str
    site: str = ""
    entities: list[Entity] = Field(default_factory=list)
    relations: list[Relation] = Field(default_factory=list)
    meta: dict[str, Any] = Field(default_factory=dict)

    def consistency_problems(self) -> list[str]:
        """Reasons this document is internally inconsistent (empty when it is sound)."""
        reasons: list[str] = []
        ids: set[str] = set()
        n = len(self.text)
        for e in self.entities:
            if e.id in ids:
                reasons.append(f"duplicate entity id {e.id!r}")
            ids.add(e.id)
            if e.end > n:
                reasons.append(f"entity {e.id} ends at {e.end}, beyond the text ({n} characters)")
                continue
            expected = e.expected_text(self.text)
            if expected != e.text:
                reasons.append(
                    f"entity {e.id} [{e.start},{e.end}) slices the text to {expected!r}, "
                    f"but its text is {e.text!r}"
                )
        rel_ids: set[str] = set()
        for r in self.relations:
            if r.id in rel_ids or r.id in ids:
                reasons.append(f"duplicate id {r.id!r}")
            rel_ids.add(r.id)
            for role, ref in (("head", r.head), ("tail", r.tail)):
                if ref not in ids:
                    reasons.append(f"relation {r.id} {role} refers to unknown entity {ref!r}")
        return reasons

    def entity_by_id(self) -> dict[str, Entity]:
        return {e.id: e for e in self.entities}

    def restricted_to(self, entity_types: set[str], relation_types: set[str]) -> Document:
        """This document keeping only the given types (relations need both ends kept)."""
        ents = [e for e in self.entities if e.type in entity_types]
        kept = {e.id for e in ents}
        rels = [
            r
            for r in self.relations
            if r.type in relation_types and r.head in kept and r.tail in kept
        ]
        return self.model_copy(update={"entities": ents, "relations": rels})
