"""Cut notes into model-sized windows at sentence boundaries, keeping character offsets,
and put per-window predictions back together.

Windows never overlap and never cut through a gold entity; a relation whose ends fall
into different windows cannot be learned from either window and is counted.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

from fedmedlora.data.document import Document, Entity, Relation

# Sentence ends for packing only: a wrong split merely moves a window boundary, it never
# corrupts offsets, so a small regex is enough here (no tokenizer model to ship).
_BOUNDARY = re.compile(r"\n+|(?<=[.!?;])\s+(?=\S)")
_WORD_GAP = re.compile(r"\s+")


@dataclass
class Chunk:
    doc_id: str
    index: int
    start: int
    end: int
    text: str
    entities: list[Entity] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)


@dataclass
class Chunked:
    chunks: list[Chunk]
    cross_chunk_relations: int = 0


def _cut_points(text: str, pattern: re.Pattern[str]) -> list[int]:
    """Positions where a window may start: after each boundary's whitespace."""
    return [m.end() for m in pattern.finditer(text) if 0 < m.end() < len(text)]


def _inside_entity(pos: int, entities: list[Entity]) -> bool:
    return any(e.start < pos < e.end for e in entities)


def _pieces(
    text: str, entities: list[Entity], length: Callable[[str], int], max_len: int
) -> list[tuple[int, int]]:
    """Sentence-like pieces; a sentence longer than max_len is cut at word gaps."""
    cuts = [p for p in _cut_points(text, _BOUNDARY) if not _inside_entity(p, entities)]
    bounds = [0, *cuts, len(text)]
    pieces: list[tuple[int, int]] = []
    for s, e in pairwise(bounds):
        if length(text[s:e]) <= max_len:
            pieces.append((s, e))
            continue
        words = [s + p for p in _cut_points(text[s:e], _WORD_GAP)]
        words = [p for p in words if not _inside_entity(p, entities)]
        start = prev = s
        for nxt in [*words, e]:
            if length(text[start:nxt]) > max_len and prev > start:
                pieces.append((start, prev))
                start = prev
            prev = nxt
        pieces.append((start, e))
    return pieces


def chunk_document(doc: Document, max_len: int, length: Callable[[str], int] = len) -> Chunked:
    """Greedily pack sentences into windows of at most `max_len` (in `length` units,
    e.g. tokens); a single over-long word or entity becomes its own window."""
    pieces = _pieces(doc.text, doc.entities, length, max_len)
    windows: list[tuple[int, int]] = []
    for s, e in pieces:
        if windows and length(doc.text[windows[-1][0] : e]) <= max_len:
            windows[-1] = (windows[-1][0], e)
        else:
            windows.append((s, e))
    chunks: list[Chunk] = []
    owner: dict[str, int] = {}
    for s, e in windows:
        # Trim surrounding whitespace; offsets stay exact.
        while s < e and doc.text[s].isspace():
            s += 1
        while e > s and doc.text[e - 1].isspace():
            e -= 1
        if s == e:
            continue
        idx = len(chunks)
        local = [
            ent.model_copy(
                update={
                    "start": ent.start - s,
                    "end": ent.end - s,
                    "fragments": tuple((a - s, b - s) for a, b in ent.fragments)
                    if ent.fragments
                    else None,
                }
            )
            for ent in doc.entities
            if s <= ent.start and ent.end <= e
        ]
        for ent in local:
            owner[ent.id] = idx
        chunks.append(Chunk(doc.id, idx, s, e, doc.text[s:e], local))
    crossing = 0
    for rel in doc.relations:
        h, t = owner.get(rel.head), owner.get(rel.tail)
        if h is not None and h == t:
            chunks[h].relations.append(rel)
        else:
            crossing += 1
    return Chunked(chunks, crossing)


def assemble(
    doc: Document,
    predictions: list[tuple[Chunk, list[Entity], list[Relation]]],
    site: str | None = None,
) -> Document:
    """One document from per-chunk predictions (chunk-relative offsets), ids renumbered."""
    entities: list[Entity] = []
    relations: list[Relation] = []
    for chunk, ents, rels in predictions:
        rename: dict[str, str] = {}
        for ent in ents:
            new_id = f"T{len(entities) + 1}"
            rename[ent.id] = new_id
            s, e = ent.start + chunk.start, ent.end + chunk.start
            entities.append(Entity(id=new_id, type=ent.type, start=s, end=e, text=doc.text[s:e]))
        for rel in rels:
            relations.append(
                Relation(
                    id=f"R{len(relations) + 1}",
                    type=rel.type,
                    head=rename[rel.head],
                    tail=rename[rel.tail],
                )
            )
    return Document(
        id=doc.id,
        text=doc.text,
        site=site if site is not None else doc.site,
        entities=entities,
        relations=relations,
        meta=dict(doc.meta),
    )
