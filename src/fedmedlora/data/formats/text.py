"""Bytes to text for the line-based readers, so an undecodable line, a byte-order mark or
a non-ASCII digit is one reported problem on its own line, never a traceback or a lost
first item. Hand-written because `open(encoding=...)` fails for the whole file at the
first bad byte and cannot say which line it was on."""

from __future__ import annotations

from pathlib import Path

from fedmedlora.errors import Problem

BOM = "\ufeff"
BOM_REASON = "starts with a UTF-8 byte-order mark (U+FEFF); ignored, re-save without it"


def undecodable(exc: UnicodeDecodeError, raw: bytes) -> tuple[int, str]:
    """The 1-based line of the first bad byte in `raw`, and a reason naming the byte."""
    line = raw.count(b"\n", 0, exc.start) + 1
    column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
    return line, f"not UTF-8: byte 0x{raw[exc.start]:02x} at column {column}"


def read_lines(path: Path, problems: list[Problem]) -> list[str | None] | None:
    """The file's lines (split on `\\n` only, `\\r` kept), each decoded on its own; a line
    that is not UTF-8 is reported and None in its place. A leading BOM is reported and
    removed. None (reported) when the file cannot be read at all."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problems.append(Problem(str(path), 0, f"cannot read: {exc.strerror or exc}"))
        return None
    lines: list[str | None] = []
    for n, chunk in enumerate(raw.split(b"\n"), start=1):
        try:
            line = chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            _, reason = undecodable(exc, chunk)
            problems.append(Problem(str(path), n, f"{reason}; line skipped"))
            lines.append(None)
            continue
        if n == 1 and line.startswith(BOM):
            problems.append(Problem(str(path), 1, BOM_REASON))
            line = line[1:]
        lines.append(line)
    return lines


def read_text(path: Path, problems: list[Problem], keep_bom_offsets: bool = False) -> str | None:
    """A whole file as text (newlines untouched, as offsets count them), or None with the
    line of the first bad byte reported. A leading BOM is reported; with
    `keep_bom_offsets` it becomes a space (brat counts it in offsets), else it is removed."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problems.append(Problem(str(path), 0, f"cannot read: {exc.strerror or exc}"))
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, reason = undecodable(exc, raw)
        problems.append(Problem(str(path), line, f"{reason}; file skipped"))
        return None
    if text.startswith(BOM):
        if keep_bom_offsets:
            problems.append(
                Problem(
                    str(path),
                    1,
                    "starts with a UTF-8 byte-order mark (U+FEFF); read as a space so "
                    "offsets still count it, as brat does",
                )
            )
            return " " + text[1:]
        problems.append(Problem(str(path), 1, BOM_REASON))
        return text[1:]
    return text


def ascii_int(value: str) -> int | None:
    """A non-negative integer written in ASCII digits only, else None. `int()` and
    `str.isdigit` accept `²`, `١٢` or `1_0`, which no annotation tool writes."""
    value = value.strip()
    return int(value) if value.isascii() and value.isdecimal() else None
