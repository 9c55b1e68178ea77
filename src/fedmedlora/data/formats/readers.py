"""One entry point for every input format, with detection for when the user names none."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from fedmedlora.data.formats import ReadResult
from fedmedlora.data.formats.bioc import read_bioc
from fedmedlora.data.formats.brat import read_brat
from fedmedlora.data.formats.jsonl import read_jsonl
from fedmedlora.data.formats.pubtator import read_pubtator
from fedmedlora.data.schema import Schema
from fedmedlora.errors import ConfigError

READERS: dict[str, Callable[[Path], ReadResult]] = {
    "brat": read_brat,
    "pubtator": read_pubtator,
    "bioc": read_bioc,
    "jsonl": read_jsonl,
}
FORMATS = tuple(READERS)

_PUBTATOR_TITLE = re.compile(r"^[^|\t]+\|t\|")


def detect_format(path: str | Path) -> str:
    """Guess the format: a directory of .ann files is brat; otherwise the suffix, then the
    first non-blank line (`PMID|t|` PubTator, `<` BioC, `{` JSONL). Raises ConfigError."""
    path = Path(path)
    if path.is_dir():
        if next(path.rglob("*.ann"), None) is not None:
            return "brat"
        raise ConfigError(f"{path}: directory holds no brat .ann files; give --format")
    if not path.is_file():
        raise ConfigError(f"{path}: no such file or directory")
    if path.suffix == ".ann" or (path.suffix == ".txt" and path.with_suffix(".ann").is_file()):
        return "brat"
    by_suffix = {".xml": "bioc", ".bioc": "bioc", ".jsonl": "jsonl", ".pubtator": "pubtator"}
    if path.suffix.lower() in by_suffix:
        return by_suffix[path.suffix.lower()]
    with path.open(encoding="utf-8-sig", errors="replace") as fh:  # -sig: a BOM is no clue
        first = next((line for line in fh if line.strip()), "")
    if _PUBTATOR_TITLE.match(first):
        return "pubtator"
    if first.lstrip().startswith("<"):
        return "bioc"
    if first.lstrip().startswith("{"):
        return "jsonl"
    raise ConfigError(
        f"{path}: cannot tell its format from its name or first line; "
        f"give one of {', '.join(FORMATS)}"
    )


def read_any(
    path: str | Path, format: str | None = None, schema: Schema | None = None
) -> ReadResult:
    """Read `path` in `format` (detected when None). Problems inside the files are in the
    result; an unknown format or a missing path raises ConfigError. JSONL, already in
    target terms, is checked against `schema` when given."""
    path = Path(path)
    if format is None:
        format = detect_format(path)
    reader = READERS.get(format.lower())
    if reader is None:
        raise ConfigError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if not path.exists():
        raise ConfigError(f"{path}: no such file or directory")
    if format.lower() == "jsonl" and schema is not None:
        return read_jsonl(path, schema)
    return reader(path)
