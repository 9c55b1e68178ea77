"""Unannotated notes: one .txt file per note (the id is the file name without suffix)."""

from __future__ import annotations

from pathlib import Path

from fedmedlora.data.document import Document
from fedmedlora.data.formats import ReadResult
from fedmedlora.data.formats.text import read_text
from fedmedlora.errors import Problem


def read_text_notes(path: str | Path, site: str = "") -> ReadResult:
    """A folder of .txt files (sorted by name), or a single .txt file."""
    path = Path(path)
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    result = ReadResult()
    if not files:
        result.problems.append(Problem(str(path), 0, "no .txt files found"))
    for f in files:
        # Bytes decoded as is (\r\n kept), so offsets index the file's own characters.
        text = read_text(f, result.problems)
        if text is None:
            continue
        result.documents.append(Document(id=f.stem, text=text, site=site, meta={"source": str(f)}))
    return result
