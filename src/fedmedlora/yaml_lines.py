"""Line numbers of the nodes of a YAML document, so that a problem found after parsing
(a pydantic error, a missing data path) names the line the user has to edit."""

from __future__ import annotations

from collections.abc import Sequence

import yaml

Loc = tuple[str | int, ...]


def node_lines(text: str) -> dict[Loc, int]:
    """Map every key path (("data", "sites", 0, "train") ...) to its 1-based line: the
    line of the key for mapping entries, of the item for sequence entries. Empty for text
    that is not valid YAML (the parser reports that itself)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[Loc, int] = {}

    # PyYAML's compose gives the nodes with their marks; walking them is the only way to
    # get lines for keys (safe_load drops the marks), hence this small walker.
    def walk(node: yaml.Node, loc: Loc) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                here = (*loc, key.value)
                lines[here] = key.start_mark.line + 1
                walk(value, here)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[(*loc, i)] = item.start_mark.line + 1
                walk(item, (*loc, i))

    if root is not None:
        lines[()] = root.start_mark.line + 1
        walk(root, ())
    return lines


def line_of(lines: dict[Loc, int], loc: Sequence[str | int]) -> int:
    """The line of `loc`, or of its nearest ancestor present in the file (pydantic adds
    union-member names to a loc, and a missing key has no line of its own); 0 if none."""
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return 0


def yaml_error_line(exc: yaml.YAMLError) -> int:
    """The 1-based line a YAML syntax error points at (0 when PyYAML gives none)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    # (the problem's own mark: where the parser stopped; yaml_reason names the start)
    return mark.line + 1 if mark is not None else 0


def yaml_reason(exc: yaml.YAMLError) -> str:
    """A YAML syntax error on one line: what was wrong, and where the construct it broke
    began (an unclosed bracket is reported where the parser gave up, lines later)."""
    problem = " ".join(str(getattr(exc, "problem", "") or exc).split())
    context, mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and mark is not None:
        return f"{problem} ({context} that starts on line {mark.line + 1})"
    return problem
