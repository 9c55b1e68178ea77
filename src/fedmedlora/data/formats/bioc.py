"""BioC XML reader: collection / document / passage / annotation / relation.

* Document text: each passage's (or, lacking one, each sentence's) text placed at its
  offset, gaps filled with spaces, so document-level annotation offsets index it directly.
* Annotations: `infon key="type"` -> entity type; one `location` per piece (several ->
  discontinuous fragments); the annotation `text` is checked against the offsets. Concept
  ids (infon `identifier`, `MESH`, ...) go to `meta["concepts"]` as in the PubTator reader.
* Relations with two `node`s -> `Relation(head=first node, tail=second node)`, typed by the
  `type` or `relation` infon; relations without nodes (BC5CDR CID: concept ids in infons)
  -> `meta["doc_relations"]` ({type, args}), the PubTator reader's form.

Parsed with the standard library's expat (no lxml dependency); every problem names the line
of the element concerned. Documents are converted as soon as they close, so a file that
breaks off keeps the documents before the break.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.parsers import expat

from pydantic import ValidationError

from fedmedlora.data.document import Document, Entity, Relation
from fedmedlora.data.formats import ReadResult
from fedmedlora.data.formats.text import ascii_int
from fedmedlora.errors import Problem

CONCEPT_KEYS = ("identifier", "Identifier", "MESH", "MeSH", "concept_id", "CUI", "NCBI Gene")
_TYPE_KEYS = ("type", "relation", "Type")


@dataclass
class _Node:
    tag: str
    attrs: dict[str, str]
    line: int
    children: list[_Node] = field(default_factory=list)
    chunks: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def find(self, tag: str) -> _Node | None:
        return next((c for c in self.children if c.tag == tag), None)

    def findall(self, tag: str) -> list[_Node]:
        return [c for c in self.children if c.tag == tag]

    def infons(self) -> dict[str, str]:
        return {c.attrs.get("key", ""): c.text for c in self.findall("infon")}


def read_bioc(path: str | Path) -> ReadResult:
    """Read every document of a BioC XML file; see the module docstring for the mapping."""
    path = Path(path)
    result = ReadResult()
    if not path.is_file():
        result.problems.append(Problem(str(path), 0, "file not found"))
        return result
    seen: dict[str, int] = {}

    def on_document(node: _Node) -> None:
        doc = _document(str(path), node, result.problems)
        if doc is None:
            return
        if doc.id in seen:
            result.problems.append(
                Problem(
                    str(path),
                    node.line,
                    f"document {doc.id} already read at line {seen[doc.id]}; keeping the first",
                )
            )
            return
        if not doc.text.strip():
            reason = f"document {doc.id} has no passage or sentence text; skipped"
            result.problems.append(Problem(str(path), node.line, reason))
            return
        seen[doc.id] = node.line
        result.origins[doc.id] = (str(path), node.line)
        result.documents.append(doc)

    builder = _Builder(on_document)
    parser = expat.ParserCreate()
    parser.StartElementHandler = lambda tag, attrs: builder.start(
        tag, attrs, parser.CurrentLineNumber
    )
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        with path.open("rb") as fh:
            parser.ParseFile(fh)
    except expat.ExpatError as exc:
        reason = f"not well-formed XML: {expat.errors.messages[exc.code]}"
        result.problems.append(Problem(str(path), exc.lineno, reason))
    except OSError as exc:
        result.problems.append(Problem(str(path), 0, f"cannot read: {exc}"))
    return result


class _Builder:
    """Builds one `document` subtree at a time and hands it over when it closes."""

    def __init__(self, on_document: Any) -> None:
        self.stack: list[_Node] = []
        self.on_document = on_document

    def start(self, tag: str, attrs: dict[str, str], line: int) -> None:
        node = _Node(tag, attrs, line)
        if self.stack:
            self.stack[-1].children.append(node)
        self.stack.append(node)

    def end(self, tag: str) -> None:
        node = self.stack.pop()
        if tag == "document":
            if self.stack:  # drop it from the collection: memory stays one document deep
                self.stack[-1].children.pop()
            self.on_document(node)

    def data(self, chunk: str) -> None:
        if self.stack:
            self.stack[-1].chunks.append(chunk)


def _int(node: _Node | None) -> int | None:
    return ascii_int(node.text) if node is not None else None


def _document(path: str, node: _Node, problems: list[Problem]) -> Document | None:
    def problem(line: int, reason: str) -> None:
        problems.append(Problem(path, line, reason))

    id_node = node.find("id")
    doc_id = id_node.text.strip() if id_node is not None else ""
    if not doc_id:
        problem(node.line, "document without an <id>; skipped")
        return None
    text = _assemble_text(doc_id, node, problem)
    entities: list[Entity] = []
    concepts: dict[str, str] = {}
    relations: list[Relation] = []
    doc_relations: list[dict[str, Any]] = []
    ids: set[str] = set()
    containers = [node, *node.findall("passage")]
    containers += [s for p in node.findall("passage") for s in p.findall("sentence")]
    for container in containers:
        for ann in container.findall("annotation"):
            entity = _entity(doc_id, ann, text, len(entities) + 1, problem)
            if entity is None:
                continue
            if entity.id in ids:
                problem(ann.line, f"document {doc_id}: duplicate annotation id {entity.id!r}")
                continue
            ids.add(entity.id)
            entities.append(entity)
            infons = ann.infons()
            concept = next((infons[k].strip() for k in CONCEPT_KEYS if infons.get(k)), None)
            if concept:
                concepts[entity.id] = concept
    for container in containers:
        for rel in container.findall("relation"):
            _relation(doc_id, rel, ids, relations, doc_relations, problem)
    meta: dict[str, Any] = {"source": path, "passages": _passage_meta(node)}
    if concepts:
        meta["concepts"] = concepts
    if doc_relations:
        meta["doc_relations"] = doc_relations
    return Document(id=doc_id, text=text, entities=entities, relations=relations, meta=meta)


def _assemble_text(doc_id: str, node: _Node, problem: Any) -> str:
    pieces: list[tuple[int, str, int]] = []
    for passage in node.findall("passage"):
        p_offset = _int(passage.find("offset"))
        p_text = passage.find("text")
        if p_offset is None:
            problem(passage.line, f"document {doc_id}: passage without a numeric <offset>")
            continue
        if p_text is not None:
            pieces.append((p_offset, p_text.text, passage.line))
            continue
        for sentence in passage.findall("sentence"):
            s_offset, s_text = _int(sentence.find("offset")), sentence.find("text")
            if s_offset is None or s_text is None:
                problem(sentence.line, f"document {doc_id}: sentence without offset or text")
                continue
            pieces.append((s_offset, s_text.text, sentence.line))
    text = ""
    for offset, piece, line in sorted(pieces, key=lambda p: p[0]):
        if offset < len(text):
            problem(
                line,
                f"document {doc_id}: text at offset {offset} overlaps the previous one "
                f"(ending at {len(text)}); skipped",
            )
            continue
        text += " " * (offset - len(text)) + piece
    return text


def _entity(doc_id: str, ann: _Node, text: str, k: int, problem: Any) -> Entity | None:
    ann_id = ann.attrs.get("id") or f"T{k}"
    type_ = ann.infons().get("type", "").strip()
    if not type_:
        problem(ann.line, f"document {doc_id}: annotation {ann_id} has no type infon; skipped")
        return None
    spans = []
    for loc in ann.findall("location"):
        offset = ascii_int(loc.attrs.get("offset", ""))
        length = ascii_int(loc.attrs.get("length", ""))
        if offset is None or length is None:
            problem(loc.line, f"document {doc_id}: annotation {ann_id}: bad location {loc.attrs}")
            return None
        spans.append((offset, offset + length))
    if not spans:
        problem(ann.line, f"document {doc_id}: annotation {ann_id} has no location; skipped")
        return None
    spans.sort()
    if any(e <= s or e > len(text) for s, e in spans):
        problem(
            ann.line,
            f"document {doc_id}: annotation {ann_id} {spans} is empty or beyond the text "
            f"({len(text)} characters); skipped",
        )
        return None
    found = " ".join(text[s:e] for s, e in spans)
    text_node = ann.find("text")
    annotated = text_node.text if text_node is not None else found
    # BioC writers join discontinuous pieces variously; compare those ignoring spacing.
    same = found in (annotated, annotated.strip()) or (
        len(spans) > 1 and found.split() == annotated.split()
    )
    if not same:
        problem(
            ann.line,
            f"document {doc_id}: annotation {ann_id} text {annotated!r} does not match the "
            f"text at {spans} {found!r}; skipped",
        )
        return None
    try:
        return Entity(
            id=ann_id,
            type=type_,
            start=spans[0][0],
            end=spans[-1][1],
            text=found,
            fragments=tuple(spans) if len(spans) > 1 else None,
        )
    except ValidationError as exc:
        problem(ann.line, f"document {doc_id}: annotation {ann_id}: {exc.errors()[0]['msg']}")
        return None


def _relation(
    doc_id: str,
    rel: _Node,
    entity_ids: set[str],
    relations: list[Relation],
    doc_relations: list[dict[str, Any]],
    problem: Any,
) -> None:
    infons = rel.infons()
    type_key = next((k for k in _TYPE_KEYS if infons.get(k)), None)
    rel_type = infons[type_key].strip() if type_key else ""
    nodes = rel.findall("node")
    if not nodes:
        args = [v.strip() for k, v in infons.items() if k != type_key]
        doc_relations.append({"type": rel_type, "args": args})
        return
    rel_id = rel.attrs.get("id") or f"R{len(relations) + 1}"
    refs = [n.attrs.get("refid", "") for n in nodes]
    unknown = [r for r in refs if r not in entity_ids]
    why = ""
    if not rel_type:
        why = "has no type infon"
    elif len(refs) != 2:
        why = f"needs exactly 2 nodes, has {len(refs)}"
    elif unknown:
        why = f"refers to unknown or skipped annotations {unknown}"
    elif rel_id in entity_ids or any(r.id == rel_id for r in relations):
        why = "has an id already used in this document"
    if why:
        problem(rel.line, f"document {doc_id}: relation {rel_id} {why}; skipped")
        return
    relations.append(Relation(id=rel_id, type=rel_type, head=refs[0], tail=refs[1]))


def _passage_meta(node: _Node) -> list[dict[str, Any]]:
    out = []
    for passage in node.findall("passage"):
        offset, text = _int(passage.find("offset")), passage.find("text")
        if offset is not None:
            entry: dict[str, Any] = {"type": passage.infons().get("type", ""), "offset": offset}
            if text is not None:
                entry["length"] = len(text.text)
            out.append(entry)
    return out
