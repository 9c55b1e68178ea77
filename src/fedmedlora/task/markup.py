"""Inline HTML-like markup: the model rewrites a chunk with its entities wrapped in tags.

    Started <span class="drug" id="1">metoprolol</span> <span class="dosage" ref="1">25 mg</span>

Main entities carry `id="N"` (numbered in order of appearance within the chunk); a
modifier carries `ref="N M"` naming the main entities it modifies, which encodes the
schema's default relation (`modifies`); `ref="TYPE:N"` names another relation type.
Nested spans are written as nested tags; spans that cross (overlap without nesting)
cannot be written and are reported by the serializer.

Text is HTML-escaped (`<`, `>`, `&`) so lab values like "<5" never look like tags;
the parser unescapes, and also tolerates models that forget to escape.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from dataclasses import dataclass, field

from fedmedlora.data.document import Entity, Relation
from fedmedlora.data.schema import Schema


@dataclass
class Serialized:
    markup: str
    dropped_entities: list[Entity] = field(default_factory=list)
    dropped_relations: list[Relation] = field(default_factory=list)


def _nestable(entities: list[Entity], schema: Schema) -> tuple[list[Entity], list[Entity]]:
    """Keep a set of spans that nest properly; drop duplicates and crossing spans.

    Order: outer spans first, main entities before modifiers on identical spans.
    """
    order = sorted(
        entities, key=lambda e: (e.start, -e.end, not schema.is_main(e.type), e.type, e.id)
    )
    kept: list[Entity] = []
    dropped: list[Entity] = []
    seen: set[tuple[int, int, str]] = set()
    stack: list[Entity] = []
    for ent in order:
        key = (ent.start, ent.end, ent.type)
        while stack and stack[-1].end <= ent.start:
            stack.pop()
        if key in seen or (stack and ent.end > stack[-1].end):
            dropped.append(ent)
            continue
        seen.add(key)
        kept.append(ent)
        stack.append(ent)
    return kept, dropped


def serialize(
    text: str, entities: list[Entity], relations: list[Relation], schema: Schema
) -> Serialized:
    """Markup for `text` whose entities are given in offsets relative to `text`."""
    kept, dropped = _nestable(entities, schema)
    mains = [e for e in kept if schema.is_main(e.type)]
    number = {e.id: str(i) for i, e in enumerate(mains, start=1)}
    refs: dict[str, list[str]] = {}
    dropped_rel: list[Relation] = []
    kept_ids = {e.id for e in kept}
    for rel in relations:
        if rel.head not in kept_ids or rel.tail not in number:
            dropped_rel.append(rel)
            continue
        token = number[rel.tail]
        if rel.type != schema.default_relation:
            token = f"{rel.type}:{token}"
        refs.setdefault(rel.head, []).append(token)

    def open_tag(e: Entity) -> str:
        attrs = f' class="{e.type}"'
        if e.id in number:
            attrs += f' id="{number[e.id]}"'
        if e.id in refs:
            attrs += f' ref="{" ".join(refs[e.id])}"'
        return f"<span{attrs}>"

    out: list[str] = []
    pos = 0
    stack: list[Entity] = []

    def close_until(limit: int) -> None:
        nonlocal pos
        while stack and stack[-1].end <= limit:
            top = stack.pop()
            out.append(html.escape(text[pos : top.end], quote=False))
            out.append("</span>")
            pos = top.end

    for ent in kept:  # already sorted outer-first
        close_until(ent.start)
        out.append(html.escape(text[pos : ent.start], quote=False))
        out.append(open_tag(ent))
        pos = ent.start
        stack.append(ent)
    close_until(len(text))
    out.append(html.escape(text[pos:], quote=False))
    return Serialized("".join(out), dropped, dropped_rel)


CLASS_PREFIX = '<span class="'  # what serialize writes before a tag's type


def type_starts(markup: str) -> list[int]:
    """Where each tag's type name begins in serialize's markup: the one place in the
    output where the model chooses a type (training can mask that choice)."""
    out, i = [], markup.find(CLASS_PREFIX)
    while i >= 0:
        out.append(i + len(CLASS_PREFIX))
        i = markup.find(CLASS_PREFIX, i + 1)
    return out


_TAG = re.compile(r"<\s*span\b([^<>]*)>|<\s*/\s*span\s*>", re.IGNORECASE)
_ATTR = re.compile(r"""([A-Za-z_][\w-]*)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""")


@dataclass
class _Span:
    start: int
    end: int
    type: str
    local_id: str | None
    refs: list[str]


@dataclass
class Parsed:
    """Entities and relations found in an output, in offsets of the *source* text."""

    entities: list[Entity]
    relations: list[Relation]
    issues: Counter[str] = field(default_factory=Counter)


def _strip_markup(output: str, issues: Counter[str]) -> tuple[str, list[_Span]]:
    """Plain text of the output, and the spans the tags delimit in it."""
    plain: list[str] = []
    length = 0
    spans: list[_Span] = []
    stack: list[tuple[int, dict[str, str]]] = []
    pos = 0
    for m in _TAG.finditer(output):
        chunk = html.unescape(output[pos : m.start()])
        plain.append(chunk)
        length += len(chunk)
        pos = m.end()
        if m.group(0).lstrip("< \t").startswith("/"):
            if not stack:
                issues["stray_close_tag"] += 1
                continue
            start, attrs = stack.pop()
            spans.append(
                _Span(
                    start,
                    length,
                    attrs.get("class", ""),
                    attrs.get("id"),
                    attrs.get("ref", "").split(),
                )
            )
        else:
            attrs = {
                k.lower(): next(v for v in vals if v is not None)
                for k, *vals in _ATTR.findall(m.group(1) or "")
            }
            stack.append((length, attrs))
    tail = html.unescape(output[pos:])
    plain.append(tail)
    issues["unclosed_tag"] += len(stack)
    return "".join(plain), spans


def _aligner(produced: str, source: str):
    """Map positions of the model's (tag-stripped) text onto the source text.

    Models drift: they fix typos, drop or add words, change whitespace. Characters in
    matching blocks map exactly; a span is mapped to the source characters its matched
    characters cover, and dropped if none matched.
    """
    if produced == source:
        return lambda s, e: (s, e)
    from difflib import SequenceMatcher

    mapping = [-1] * len(produced)
    matcher = SequenceMatcher(None, produced, source, autojunk=False)
    for a, b, size in matcher.get_matching_blocks():
        for k in range(size):
            mapping[a + k] = b + k

    def project(s: int, e: int) -> tuple[int, int] | None:
        hits = [mapping[i] for i in range(s, e) if mapping[i] >= 0]
        if not hits:
            return None
        return hits[0], hits[-1] + 1

    return project


def parse(
    output: str, source: str, schema: Schema, allowed_types: list[str] | None = None
) -> Parsed:
    """Annotations from a model output for `source`; never raises on malformed output.

    Unknown (invented) types, unbalanced tags, unknown ids, disallowed links and spans
    that cannot be located in the source are dropped and counted in `issues`.
    """
    issues: Counter[str] = Counter()
    plain, spans = _strip_markup(output, issues)
    allowed = set(allowed_types if allowed_types is not None else schema.entity_types)
    project = _aligner(plain, source)
    if plain != source:
        issues["text_drift"] += 1

    located: list[tuple[_Span, int, int]] = []
    for sp in sorted(spans, key=lambda s: (s.start, -s.end)):
        if sp.type not in allowed:
            issues["unknown_type"] += 1
            continue
        mapped = project(sp.start, sp.end)
        if mapped is None:
            issues["unlocatable_span"] += 1
            continue
        s, e = mapped
        # Trim whitespace the alignment may have pulled in at the edges.
        while s < e and source[s].isspace():
            s += 1
        while e > s and source[e - 1].isspace():
            e -= 1
        if s >= e:
            issues["empty_span"] += 1
            continue
        located.append((sp, s, e))

    entities: list[Entity] = []
    seen: dict[tuple[int, int, str], str] = {}
    by_local: dict[str, str] = {}
    pending: list[tuple[str, str, str]] = []  # (modifier entity id, rel type, local ref)
    for sp, s, e in located:
        key = (s, e, sp.type)
        if key in seen:
            issues["duplicate_entity"] += 1
            eid = seen[key]
        else:
            eid = f"T{len(entities) + 1}"
            seen[key] = eid
            entities.append(Entity(id=eid, type=sp.type, start=s, end=e, text=source[s:e]))
        if sp.local_id is not None and schema.is_main(sp.type):
            by_local.setdefault(sp.local_id, eid)
        for token in sp.refs:
            rel_type, _, ref = token.rpartition(":")
            pending.append((eid, rel_type or (schema.default_relation or ""), ref))

    types = {e.id: e.type for e in entities}
    relations: list[Relation] = []
    seen_rel: set[tuple[str, str, str]] = set()
    for head, rel_type, ref in pending:
        tail = by_local.get(ref)
        if tail is None:
            issues["unknown_ref"] += 1
            continue
        if rel_type not in schema.relations or not schema.can_modify(types[head], types[tail]):
            issues["disallowed_relation"] += 1
            continue
        if (head, tail, rel_type) in seen_rel:
            continue
        seen_rel.add((head, tail, rel_type))
        relations.append(Relation(id=f"R{len(relations) + 1}", type=rel_type, head=head, tail=tail))
    return Parsed(entities, relations, +issues)
