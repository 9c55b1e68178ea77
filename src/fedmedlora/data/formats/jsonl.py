"""The native format: JSON Lines, one document per line, every line stamped with the
format version so files stay readable as the format evolves.

    {"schema_version": 1, "id": "note-1", "site": "a", "text": "...",
     "entities": [{"id": "T1", "type": "drug", "start": 0, "end": 7, "text": "aspirin"}],
     "relations": [{"id": "R1", "type": "modifies", "head": "T2", "tail": "T1"}],
     "meta": {}}
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from pydantic import ValidationError

from fedmedlora.data.document import Document
from fedmedlora.data.formats import ReadResult
from fedmedlora.data.formats.text import read_lines
from fedmedlora.data.schema import Schema
from fedmedlora.errors import AnnotationError, Problem

FORMAT_VERSION = 1


def schema_problems(doc: Document, schema: Schema) -> list[str]:
    """Reasons a consistent document does not fit the schema."""
    reasons = [
        f"entity {e.id} has unknown type {e.type!r}"
        for e in doc.entities
        if e.type not in schema.entity_types
    ]
    by_id = doc.entity_by_id()
    for r in doc.relations:
        if r.type not in schema.relations:
            reasons.append(f"relation {r.id} has unknown type {r.type!r}")
            continue
        head, tail = by_id.get(r.head), by_id.get(r.tail)
        if head and tail and not schema.can_modify(head.type, tail.type):
            reasons.append(
                f"relation {r.id}: {head.type!r} ({r.head}) cannot modify {tail.type!r} ({r.tail})"
            )
    return reasons


def document_problems(doc: Document, schema: Schema | None) -> list[str]:
    reasons = doc.consistency_problems()
    if schema is not None and not reasons:
        reasons = schema_problems(doc, schema)
    return reasons


def _format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f'unknown field "{loc}"')
        else:
            parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)


def _parse_line(line: str) -> tuple[Document | None, str]:
    """The document on one line, or None and why not."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg} (column {exc.colno})"
    except RecursionError:
        return None, "JSON nested too deeply"
    if not isinstance(raw, dict):
        return None, "a line must be a JSON object"
    version = raw.pop("schema_version", None)
    if version != FORMAT_VERSION:
        return None, f"schema_version must be {FORMAT_VERSION}, got {version!r}"
    try:
        return Document.model_validate(raw), ""
    except ValidationError as exc:
        return None, _format_validation_error(exc)
    except RecursionError:
        return None, "JSON nested too deeply"


def read_jsonl(path: str | Path, schema: Schema | None = None) -> ReadResult:
    """Read every valid line; every invalid one (not UTF-8, not JSON, an unknown field, a
    type `schema` does not allow, ...) becomes a Problem naming its line."""
    path = Path(path)
    result = ReadResult()
    if not path.is_file():
        result.problems.append(Problem(str(path), 0, "file not found"))
        return result
    lines = read_lines(path, result.problems)
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines or [], start=1):
        if line is None or not line.strip():
            continue
        doc, why = _parse_line(line)
        if doc is None:
            result.problems.append(Problem(str(path), lineno, why))
            continue
        reasons = document_problems(doc, schema)
        if doc.id in seen:
            reasons.append(f"document id {doc.id!r} already used on line {seen[doc.id]}")
        if reasons:
            result.problems.extend(
                Problem(str(path), lineno, f"document {doc.id}: {r}") for r in reasons
            )
            continue
        seen[doc.id] = lineno
        result.origins[doc.id] = (str(path), lineno)
        result.documents.append(doc)
    return result


def load_jsonl(path: str | Path, schema: Schema | None = None) -> list[Document]:
    """Strict read: all documents, or an AnnotationError listing every problem."""
    return read_jsonl(path, schema).raise_if_problems()


def write_jsonl(
    documents: Iterable[Document], path: str | Path, schema: Schema | None = None
) -> int:
    """Validate everything first, then write atomically, so a bad document never leaves a
    half-written file (or clobbers a good one) behind. Returns the number written."""
    path = Path(path)
    docs = list(documents)
    problems: list[Problem] = []
    seen: set[str] = set()
    for lineno, doc in enumerate(docs, start=1):
        reasons = document_problems(doc, schema)
        if doc.id in seen:
            reasons.append(f"document id {doc.id!r} is not unique")
        seen.add(doc.id)
        problems.extend(Problem(str(path), lineno, f"document {doc.id}: {r}") for r in reasons)
    if problems:
        raise AnnotationError(problems)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for doc in docs:
                line = {
                    "schema_version": FORMAT_VERSION,
                    **doc.model_dump(mode="json", exclude_none=True),
                }
                fh.write(json.dumps(line, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(docs)
