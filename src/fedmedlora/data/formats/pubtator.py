"""PubTator reader (BC5CDR, NCBI-disease): PubMed abstracts with mention annotations.

    PMID|t|title
    PMID|a|abstract
    PMID<TAB>start<TAB>end<TAB>text<TAB>type<TAB>concept_id[<TAB>...]
    PMID<TAB>CID<TAB>D1<TAB>D2          (document-level relation between concept ids)
    <blank line between documents>

The document text is title + " " + abstract, which is what the offsets count. Mentions
become entities T1, T2, ... (numbered by line order, so a skipped mention leaves a gap and
ids stay stable); their concept ids go to `meta["concepts"]` ({entity id: concept id},
stray spaces stripped). Relation lines name concepts, not mentions, so they go to
`meta["doc_relations"]` ({type, args}) rather than `Document.relations`. Read leniently:
mentions whose text does not match their offsets, repeated PMIDs (the first is kept) and
unparseable lines are reported and skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmedlora.data.document import Document, Entity
from fedmedlora.data.formats import ReadResult
from fedmedlora.data.formats.text import ascii_int, read_lines
from fedmedlora.errors import Problem

_PASSAGE = re.compile(r"^([^|\t]+)\|([ta])\|(.*)$")


@dataclass
class _Block:
    pmid: str
    line: int
    title: str | None = None
    abstract: str | None = None
    mentions: list[tuple[int, list[str]]] = field(default_factory=list)
    relations: list[dict[str, Any]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return (self.title or "") + (" " + self.abstract if self.abstract is not None else "")


def read_pubtator(path: str | Path) -> ReadResult:
    """Read every document of a PubTator file; see the module docstring for what is kept."""
    path = Path(path)
    result = ReadResult()
    if not path.is_file():
        result.problems.append(Problem(str(path), 0, "file not found"))
        return result
    lines = read_lines(path, result.problems)
    if lines is None:
        return result
    blocks = _blocks(str(path), lines, result.problems)
    first_seen: dict[str, _Block] = {}
    for block in blocks:
        earlier = first_seen.get(block.pmid)
        if earlier is not None:
            same = "an identical copy" if earlier.raw == block.raw else "a different version"
            result.problems.append(
                Problem(
                    str(path),
                    block.line,
                    f"document {block.pmid} already read at line {earlier.line} ({same}); "
                    "keeping the first",
                )
            )
            continue
        first_seen[block.pmid] = block
        doc = _document(str(path), block, result.problems)
        if doc is not None:
            result.documents.append(doc)
            result.origins[doc.id] = (str(path), block.line)
    return result


def _blocks(path: str, lines: list[str | None], problems: list[Problem]) -> list[_Block]:
    """Group lines by document: a title line or a new PMID starts one. An undecodable line
    (None, already reported) is skipped without ending its document."""
    blocks: list[_Block] = []
    current: _Block | None = None
    for n, raw in enumerate(lines, start=1):
        if raw is None:
            continue
        line = raw.rstrip("\r")
        if not line.strip():
            current = None
            continue
        m = _PASSAGE.match(line)
        fields = line.split("\t")
        offsets = [ascii_int(f) for f in fields[1:3]]
        is_mention = len(fields) >= 6 and None not in offsets
        if not m and len(fields) >= 6 and not is_mention:
            reason = (
                f"mention offsets must be whole numbers in ASCII digits, got "
                f"{fields[1]!r} {fields[2]!r}; skipped"
            )
            problems.append(Problem(path, n, reason))
            continue
        # Relation lines: PMID, type, 1-3 arguments (CID has 2; BioRED adds a novelty flag).
        is_relation = not m and 3 <= len(fields) <= 5 and ascii_int(fields[1]) is None
        if not (m or is_mention or is_relation):
            reason = f"not a PubTator title, abstract, mention or relation line: {line[:60]!r}"
            problems.append(Problem(path, n, reason))
            continue
        pmid = m.group(1) if m else fields[0]
        if current is None or current.pmid != pmid or (m and m.group(2) == "t"):
            current = _Block(pmid=pmid, line=n)
            blocks.append(current)
        current.raw.append(line)
        if m:
            kind, value = m.group(2), m.group(3)
            if (current.title if kind == "t" else current.abstract) is not None:
                problems.append(Problem(path, n, f"document {pmid}: second |{kind}| line ignored"))
            elif kind == "t":
                current.title = value
            else:
                current.abstract = value
        elif is_mention:
            current.mentions.append((n, fields))
        else:
            args = [f.strip() for f in fields[2:]]
            current.relations.append({"type": fields[1].strip(), "args": args})
    return blocks


def _document(path: str, block: _Block, problems: list[Problem]) -> Document | None:
    if block.title is None:
        problems.append(Problem(path, block.line, f"document {block.pmid} has no |t| title line"))
        return None
    text = block.text
    entities: list[Entity] = []
    concepts: dict[str, str] = {}
    for k, (n, fields) in enumerate(block.mentions, start=1):
        start, end = int(fields[1]), int(fields[2])  # ASCII digits: checked in _blocks
        mention, type_ = fields[3], fields[4].strip()
        found = text[start:end]
        if end <= start or end > len(text) or not type_:
            problems.append(
                Problem(
                    path,
                    n,
                    f"document {block.pmid}: mention [{start},{end}) is empty, "
                    f"untyped or beyond the text ({len(text)} characters); skipped",
                )
            )
            continue
        if found not in (mention, mention.strip()):
            problems.append(
                Problem(
                    path,
                    n,
                    f"document {block.pmid}: mention text {mention!r} does not match the text "
                    f"at [{start},{end}) {found!r}; skipped",
                )
            )
            continue
        entity_id = f"T{k}"
        entities.append(Entity(id=entity_id, type=type_, start=start, end=end, text=found))
        concept = fields[5].strip()
        if concept:
            concepts[entity_id] = concept
    meta: dict[str, Any] = {"source": path, "passages": _passages(block)}
    if concepts:
        meta["concepts"] = concepts
    if block.relations:
        meta["doc_relations"] = block.relations
    return Document(id=block.pmid, text=text, entities=entities, meta=meta)


def _passages(block: _Block) -> list[dict[str, Any]]:
    """Where title and abstract sit in the text (kept so writers can rebuild passages)."""
    title = block.title or ""
    passages: list[dict[str, Any]] = [{"type": "title", "offset": 0, "length": len(title)}]
    if block.abstract is not None:
        passages.append(
            {"type": "abstract", "offset": len(title) + 1, "length": len(block.abstract)}
        )
    return passages
