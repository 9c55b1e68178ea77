"""brat standoff reader (MACCROBAT, Chia, most clinical corpora): `.txt` + `.ann` pairs.

Read leniently: every line that cannot be used becomes a `Problem(file, line, reason)` and
is skipped; the rest of the document is kept. What each annotation kind becomes:

* `T` text-bound spans -> `Entity` (discontinuous `0 5;8 12` -> `fragments`, text joined
  with single spaces as brat does). A span whose text differs from the annotated text only
  by surrounding whitespace (Chia: spans ending on the `\\r` of a CRLF) is trimmed and kept,
  and reported; any other mismatch is reported and the entity skipped.
* `E` events -> no entity of their own: an event id resolves to its trigger `T` entity, so
  relations and attributes on events (MACCROBAT) land on entities. Event arguments
  (`Theme:T3`) become relations typed by the role, head = trigger, tail = argument.
* `R` relations -> `Relation(head=Arg1, tail=Arg2)`, source direction kept (mappings decide
  which argument is the modifier).
* `*` equivalences (`*\\tOVERLAP E1 E2 E3`, Chia `OR`) -> one relation of that type between
  each pair of consecutive members, plus the group in `meta["equivalences"]`.
* `A`/`M` attributes -> `meta["attributes"]` ({id, type, target, value}; binary ones: True),
  `N` normalizations -> `meta["normalizations"]`, `#` notes -> `meta["notes"]`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedmedlora.data.document import Document, Entity, Relation
from fedmedlora.data.formats import ReadResult
from fedmedlora.data.formats.text import read_lines, read_text
from fedmedlora.errors import Problem

# [0-9], not \d: \d also matches other scripts' digits (Arabic-Indic, ...).
_SPAN = re.compile(r"^([0-9]+) ([0-9]+)$")
_ARG = re.compile(r"^([^:\s]+):(\S+)$")


def read_brat(path: str | Path) -> ReadResult:
    """Read a directory of `.txt`/`.ann` pairs (searched recursively), or one pair given by
    either file. Unpaired files are reported; document ids are paths relative to the
    directory without suffix (the file stem for flat corpora)."""
    path = Path(path)
    result = ReadResult()
    if path.is_dir():
        pairs = _pairs_in(path, result)
    elif path.suffix in (".ann", ".txt") and path.is_file():
        partner = path.with_suffix(".txt" if path.suffix == ".ann" else ".ann")
        if not partner.is_file():
            result.problems.append(Problem(str(path), 0, f"no matching {partner.suffix} file"))
            return result
        pairs = [(path.stem, path.with_suffix(".txt"), path.with_suffix(".ann"))]
    else:
        reason = "not a brat .ann/.txt file or directory" if path.exists() else "not found"
        result.problems.append(Problem(str(path), 0, reason))
        return result
    for doc_id, txt, ann in pairs:
        doc, problems = read_brat_pair(txt, ann, doc_id)
        result.problems.extend(problems)
        if doc is not None:
            result.documents.append(doc)
            result.origins[doc.id] = (str(ann), 0)
    return result


def _pairs_in(root: Path, result: ReadResult) -> list[tuple[str, Path, Path]]:
    stems: dict[Path, set[str]] = {}
    for p in root.rglob("*"):
        if p.suffix in (".txt", ".ann") and p.is_file():
            stems.setdefault(p.with_suffix(""), set()).add(p.suffix)
    pairs = []
    for base in sorted(stems):
        found = stems[base]
        if found == {".txt", ".ann"}:
            doc_id = base.relative_to(root).as_posix()
            pairs.append((doc_id, base.with_suffix(".txt"), base.with_suffix(".ann")))
        else:
            have, lack = (".txt", ".ann") if ".txt" in found else (".ann", ".txt")
            result.problems.append(
                Problem(str(base.with_suffix(have)), 0, f"no matching {lack} file; skipped")
            )
    if not stems:
        result.problems.append(Problem(str(root), 0, "no .txt/.ann files found"))
    return pairs


def read_brat_pair(
    txt_path: str | Path, ann_path: str | Path, doc_id: str | None = None
) -> tuple[Document | None, list[Problem]]:
    """One document from a text file and its annotations, with the problems found. A text
    that is not UTF-8 loses the document (offsets cannot be trusted); an annotation line
    that is not UTF-8 loses that line only."""
    txt_path, ann_path = Path(txt_path), Path(ann_path)
    problems: list[Problem] = []
    text = read_text(txt_path, problems, keep_bom_offsets=True)
    if text is None:
        return None, problems
    lines = read_lines(ann_path, problems)
    if lines is None:
        return None, problems
    parser = _AnnParser(str(ann_path), text, problems=problems)
    parser.parse(lines)
    doc = Document(
        id=doc_id or txt_path.stem,
        text=text,
        entities=parser.entities,
        relations=parser.relations,
        meta={"source": str(ann_path), **parser.meta()},
    )
    return doc, parser.problems


@dataclass
class _AnnParser:
    """Two passes: text-bound annotations and events first (anything may refer to them,
    in any order), then relations, equivalences, attributes and notes."""

    path: str
    text: str
    entities: list[Entity] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    attributes: list[dict[str, Any]] = field(default_factory=list)
    normalizations: list[dict[str, Any]] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)
    equivalences: list[dict[str, Any]] = field(default_factory=list)
    _entity_ids: set[str] = field(default_factory=set)
    _events: dict[str, tuple[int, str, str, list[str]]] = field(default_factory=dict)
    _resolved: dict[str, str] = field(default_factory=dict)
    _used_ids: set[str] = field(default_factory=set)
    _relation_ids: set[str] = field(default_factory=set)

    def problem(self, line: int, reason: str) -> None:
        self.problems.append(Problem(self.path, line, reason))

    def meta(self) -> dict[str, Any]:
        parts = {
            "attributes": self.attributes,
            "normalizations": self.normalizations,
            "notes": self.notes,
            "equivalences": self.equivalences,
        }
        return {k: v for k, v in parts.items() if v}

    def parse(self, ann_lines: list[str | None]) -> None:
        # Lines split on "\n" only, not splitlines(): annotated text may hold \x85, \u2028.
        lines = [(n, line.rstrip("\r")) for n, line in enumerate(ann_lines, start=1) if line]
        later = []
        for n, line in lines:
            if not line.strip():
                continue
            kind = line[0]
            if kind == "T":
                self._textbound(n, line)
            elif kind == "E":
                self._event_line(n, line)
            elif kind in "R*AMN#":
                later.append((n, line))
            else:
                self.problem(n, f"unrecognised annotation line {line[:40]!r}")
        self._resolve_events()
        # Relations before attributes and notes, which may point at relations.
        later.sort(key=lambda item: item[1][0] not in "R*")
        for n, line in later:
            handler = {
                "R": self._relation,
                "*": self._equivalence,
                "A": self._attribute,
                "M": self._attribute,
                "N": self._normalization,
                "#": self._note,
            }[line[0]]
            handler(n, line)

    def _claim(self, n: int, ann_id: str) -> bool:
        if ann_id in self._used_ids:
            self.problem(n, f"duplicate annotation id {ann_id!r}; line skipped")
            return False
        self._used_ids.add(ann_id)
        return True

    def _textbound(self, n: int, line: str) -> None:
        parts = line.split("\t", 2)
        if len(parts) != 3:
            self.problem(
                n, "text-bound annotation needs 3 tab-separated fields: ID, TYPE SPANS, TEXT"
            )
            return
        ann_id, type_spans, annotated = parts
        type_, _, span_str = type_spans.partition(" ")
        spans = []
        for piece in span_str.split(";"):
            m = _SPAN.match(piece.strip())
            if not m:
                self.problem(n, f"{ann_id}: bad span {piece!r} (expected 'START END')")
                return
            spans.append((int(m.group(1)), int(m.group(2))))
        if not type_ or not spans:
            self.problem(n, f"{ann_id}: missing type or span")
            return
        for s, e in spans:
            if e <= s or e > len(self.text):
                self.problem(
                    n,
                    f"{ann_id}: span {s} {e} is empty or beyond the text ({len(self.text)} chars)",
                )
                return
        spans = self._check_text(n, ann_id, spans, annotated)
        if spans is None or not self._claim(n, ann_id):
            return
        ordered = sorted(spans)
        try:
            entity = Entity(
                id=ann_id,
                type=type_,
                start=ordered[0][0],
                end=ordered[-1][1],
                text=" ".join(self.text[s:e] for s, e in ordered),
                fragments=tuple(ordered) if len(ordered) > 1 else None,
            )
        except ValidationError as exc:
            self.problem(n, f"{ann_id}: {exc.errors()[0]['msg']}")
            return
        self.entities.append(entity)
        self._entity_ids.add(ann_id)

    def _check_text(
        self, n: int, ann_id: str, spans: list[tuple[int, int]], annotated: str
    ) -> list[tuple[int, int]] | None:
        """The spans if they slice to the annotated text; trimmed spans when they differ only
        by surrounding whitespace (reported); None (reported) otherwise."""
        found = " ".join(self.text[s:e] for s, e in spans)
        if found == annotated or found == annotated.strip():
            return spans
        trimmed = []
        for s, e in spans:
            piece = self.text[s:e]
            lead = len(piece) - len(piece.lstrip())
            tail = len(piece) - len(piece.rstrip())
            if e - tail > s + lead:
                trimmed.append((s + lead, e - tail))
        if trimmed and " ".join(self.text[s:e] for s, e in trimmed) == annotated.strip():
            shown = ";".join(f"{s} {e}" for s, e in trimmed)
            self.problem(
                n,
                f"{ann_id}: span text {found!r} has whitespace the annotation {annotated!r} "
                f"lacks; trimmed to {shown}",
            )
            return trimmed
        self.problem(
            n,
            f"{ann_id}: annotated text {annotated!r} does not match the text at its offsets "
            f"{found!r}; skipped",
        )
        return None

    def _event_line(self, n: int, line: str) -> None:
        parts = line.split("\t")
        if len(parts) < 2 or not parts[1].strip():
            self.problem(n, "event needs 2 tab-separated fields: ID, TYPE:TRIGGER [ROLE:ARG ...]")
            return
        ann_id, args = parts[0], parts[1].split()
        trigger = _ARG.match(args[0])
        if not trigger:
            self.problem(n, f"{ann_id}: bad event trigger {args[0]!r}")
            return
        if self._claim(n, ann_id):
            self._events[ann_id] = (n, trigger.group(1), trigger.group(2), args[1:])

    def _resolve_events(self) -> None:
        for ann_id, (n, type_, trigger, _) in self._events.items():
            if trigger in self._entity_ids:
                self._resolved[ann_id] = trigger
            else:
                self.problem(n, f"{ann_id}: {type_} event trigger {trigger!r} is not a known span")
        for ann_id, (n, _, trigger, args) in self._events.items():
            if ann_id not in self._resolved:
                continue
            for arg in args:
                m = _ARG.match(arg)
                if not m:
                    self.problem(n, f"{ann_id}: bad event argument {arg!r}")
                    continue
                role, ref = m.group(1), m.group(2)
                target = self._ref(n, ann_id, ref)
                if target is not None:
                    self.relations.append(
                        Relation(id=f"{ann_id}.{role}", type=role, head=trigger, tail=target)
                    )

    def _ref(self, n: int, ann_id: str, ref: str) -> str | None:
        """The entity id an annotation id stands for (events resolve to their trigger)."""
        if ref in self._entity_ids:
            return ref
        if ref in self._resolved:
            return self._resolved[ref]
        self.problem(n, f"{ann_id}: refers to {ref!r}, which is not a usable span or event")
        return None

    def _relation(self, n: int, line: str) -> None:
        parts = line.split("\t")
        fields = parts[1].split() if len(parts) > 1 else []
        if len(fields) != 3:
            self.problem(n, "relation needs 'ID<TAB>TYPE Arg1:ID Arg2:ID'")
            return
        ann_id, (type_, a1, a2) = parts[0], fields
        m1, m2 = _ARG.match(a1), _ARG.match(a2)
        if not (m1 and m2):
            self.problem(n, f"{ann_id}: bad relation arguments {a1!r} {a2!r}")
            return
        head, tail = self._ref(n, ann_id, m1.group(2)), self._ref(n, ann_id, m2.group(2))
        if head is not None and tail is not None and self._claim(n, ann_id):
            self.relations.append(Relation(id=ann_id, type=type_, head=head, tail=tail))
            self._relation_ids.add(ann_id)

    def _equivalence(self, n: int, line: str) -> None:
        parts = line.split("\t")
        fields = parts[1].split() if len(parts) > 1 else []
        if len(fields) < 3:
            self.problem(n, "equivalence needs '*<TAB>TYPE ID ID [ID ...]'")
            return
        type_, refs = fields[0], fields[1:]
        members = [m for m in (self._ref(n, "*", r) for r in refs) if m is not None]
        if len(members) < 2:
            return
        group = len(self.equivalences) + 1
        self.equivalences.append({"type": type_, "members": members})
        for k in range(len(members) - 1):
            self.relations.append(
                Relation(id=f"*{group}.{k + 1}", type=type_, head=members[k], tail=members[k + 1])
            )

    def _attribute(self, n: int, line: str) -> None:
        parts = line.split("\t")
        fields = parts[1].split() if len(parts) > 1 else []
        if len(fields) not in (2, 3):
            self.problem(n, "attribute needs 'ID<TAB>TYPE TARGET [VALUE]'")
            return
        target = self._ref(n, parts[0], fields[1])
        if target is not None and self._claim(n, parts[0]):
            value: str | bool = fields[2] if len(fields) == 3 else True
            self.attributes.append(
                {"id": parts[0], "type": fields[0], "target": target, "value": value}
            )

    def _normalization(self, n: int, line: str) -> None:
        parts = line.split("\t")
        fields = parts[1].split() if len(parts) > 1 else []
        if len(fields) != 3:
            self.problem(n, "normalization needs 'ID<TAB>TYPE TARGET DB:ID<TAB>TEXT'")
            return
        target = self._ref(n, parts[0], fields[1])
        if target is not None and self._claim(n, parts[0]):
            self.normalizations.append(
                {
                    "id": parts[0],
                    "type": fields[0],
                    "target": target,
                    "ref": fields[2],
                    "text": parts[2] if len(parts) > 2 else "",
                }
            )

    def _note(self, n: int, line: str) -> None:
        parts = line.split("\t", 2)
        fields = parts[1].split() if len(parts) > 1 else []
        if len(fields) != 2:
            self.problem(n, "note needs '#ID<TAB>TYPE TARGET<TAB>TEXT'")
            return
        # Notes may annotate relations too (MACCROBAT: `AnnotatorNotes R45`).
        ref = fields[1]
        target = ref if ref in self._relation_ids else self._ref(n, parts[0], ref)
        if target is not None:
            self.notes.append(
                {
                    "id": parts[0],
                    "type": fields[0],
                    "target": target,
                    "text": parts[2] if len(parts) > 2 else "",
                }
            )


def write_brat(documents: list[Document], out_dir: str | Path) -> int:
    """Write each document as <id>.txt and <id>.ann (T and R lines), readable by brat and
    by `read_brat`. Discontinuous entities keep their fragments."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for doc in documents:
        ids = {e.id: f"T{i}" for i, e in enumerate(doc.entities, start=1)}
        lines = []
        for e in doc.entities:
            spans = ";".join(f"{s} {t}" for s, t in e.spans)
            lines.append(f"{ids[e.id]}\t{e.type} {spans}\t{e.text}")
        for i, r in enumerate(doc.relations, start=1):
            lines.append(f"R{i}\t{r.type} Arg1:{ids[r.head]} Arg2:{ids[r.tail]}\t")
        safe = doc.id.replace("/", "_")
        with (out / f"{safe}.txt").open("w", encoding="utf-8", newline="") as fh:
            fh.write(doc.text)
        (out / f"{safe}.ann").write_text(
            "\n".join(lines) + ("\n" if lines else ""), encoding="utf-8"
        )
    return len(documents)
