"""Checks on documents once read, before anything trains on them: types the schema or the
site does not know, relations the schema forbids, and documents read twice. Each finding
names file, line and reason. Problems are what would otherwise be trained on wrongly or
lost without a word; warnings are what a user may mean (a site that labels only some of
the schema's types, the same text under two ids) but should see."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from fedmedlora.data.document import Document
from fedmedlora.data.formats import ReadResult
from fedmedlora.data.schema import Schema
from fedmedlora.data.site import SiteSpec
from fedmedlora.errors import Problem


@dataclass
class Findings:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)


def _count(n: int, kind: str) -> str:
    plural = {"entity": "entities", "relation": "relations"}[kind]
    return f"{n} {kind if n == 1 else plural}"


def check_types(result: ReadResult, spec: SiteSpec, schema: Schema, found: Findings) -> None:
    """Leave out of `result.documents` the entities whose type `schema` does not define and
    the relations it does not allow (problems), and report the entities and relations of
    schema types `spec` does not list (warnings: `SiteSpec.restrict` leaves those out)."""
    unlisted: dict[tuple[str, str, str], list[int]] = {}  # (path, kind, type) -> [n, line]
    for k, doc in enumerate(result.documents):
        path, line = result.origin(doc)
        unknown = Counter(e.type for e in doc.entities if e.type not in schema.entity_types)
        for t, n in unknown.items():
            found.problems.append(
                Problem(
                    path,
                    line,
                    f"document {doc.id}: {_count(n, 'entity')} of type {t!r}, which schema "
                    f"{schema.name!r} does not define, left out (give a mapping?)",
                )
            )
        by_id = {e.id: e for e in doc.entities if e.type not in unknown}
        relations = []
        for r in doc.relations:
            head, tail = by_id.get(r.head), by_id.get(r.tail)
            why = ""
            if r.type not in schema.relations:
                why = f"has type {r.type!r}, which schema {schema.name!r} does not define"
            elif head and tail and not schema.can_modify(head.type, tail.type):
                why = f"{head.type!r} cannot modify {tail.type!r} in schema {schema.name!r}"
            if why:
                found.problems.append(
                    Problem(path, line, f"document {doc.id}: relation {r.id} {why}; left out")
                )
                continue
            relations.append(r)
            if r.type not in spec.relation_types:
                unlisted.setdefault((path, "relation", r.type), [0, line])[0] += 1
        for e in doc.entities:
            if e.type not in unknown and e.type not in spec.entity_types:
                unlisted.setdefault((path, "entity", e.type), [0, line])[0] += 1
        if unknown or len(relations) != len(doc.relations):
            entities = [e for e in doc.entities if e.type not in unknown]
            result.documents[k] = doc.model_copy(
                update={"entities": entities, "relations": relations}
            )
    for (path, kind, type_), (n, line) in unlisted.items():
        found.warnings.append(
            Problem(
                path,
                line,
                f"{_count(n, kind)} of type {type_!r} (the first here), which site "
                f"{spec.name} does not list, left out of training and scoring",
            )
        )


def _where(path: str, line: int) -> str:
    return f"{path}:{line}" if line else path


def _text_key(doc: Document) -> str:
    return hashlib.blake2b(doc.text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def check_duplicates(
    parts: Iterable[tuple[str, ReadResult]], found: Findings
) -> dict[str, list[Document]]:
    """The documents of each named part (`train`, `test`) without repeats. A document id
    seen before (in any part) is a problem and the later copy is left out; the same text
    under another id is a warning (within a part) or a problem with the later copy left
    out (across parts: test text trained on would inflate the scores)."""
    ids: dict[str, tuple[str, str, int]] = {}
    texts: dict[str, tuple[str, str, str, int]] = {}
    out: dict[str, list[Document]] = {}
    for part, result in parts:
        kept = out.setdefault(part, [])
        for doc in result.documents:
            path, line = result.origin(doc)
            if doc.id in ids:
                first_part, first_path, first_line = ids[doc.id]
                shown = f" ({first_part})" if first_part != part else ""
                found.problems.append(
                    Problem(
                        path,
                        line,
                        f"document {doc.id} already read{shown} at "
                        f"{_where(first_path, first_line)}; this copy left out",
                    )
                )
                continue
            ids[doc.id] = (part, path, line)
            key = _text_key(doc)
            if key in texts and doc.text.strip():
                first_id, first_part, first_path, first_line = texts[key]
                where = f"document {first_id} at {_where(first_path, first_line)}"
                if first_part != part:
                    found.problems.append(
                        Problem(
                            path,
                            line,
                            f"{part} document {doc.id} has the same text as {first_part} "
                            f"{where}; this copy left out",
                        )
                    )
                    continue
                found.warnings.append(
                    Problem(path, line, f"document {doc.id} has the same text as {where}")
                )
            texts.setdefault(key, (doc.id, part, path, line))
            kept.append(doc)
    return out


def check_split_overlap(
    train: list[Document], test: list[Document], origin: dict[str, tuple[str, int]]
) -> list[Problem]:
    """Warnings for test documents whose text is also a training document's (the seeded
    split keeps ids apart, not texts): their scores are inflated."""
    first: dict[str, str] = {}
    for d in train:
        first.setdefault(_text_key(d), d.id)
    out = []
    for d in test:
        twin = first.get(_text_key(d))
        if twin is not None and d.text.strip():
            path, line = origin.get(d.id, ("", 0))
            out.append(
                Problem(
                    path,
                    line,
                    f"test document {d.id} has the same text as train document {twin} "
                    "(seeded split): its scores are inflated",
                )
            )
    return out
