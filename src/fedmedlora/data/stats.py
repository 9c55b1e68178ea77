"""Corpus statistics: what a reader found (and, after a mapping, what was dropped), as a
plain dict for JSON output and as rich tables for people."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from fedmedlora.data.formats import ReadResult
from fedmedlora.errors import Problem


def _by_count(counter: Counter[str]) -> dict[str, int]:
    """Most frequent first, ties by name, so output is stable across runs."""
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def corpus_stats(
    result: ReadResult,
    dropped: Mapping[str, int] | None = None,
    warnings: list[Problem] | None = None,
) -> dict[str, Any]:
    """Counts over the documents read, and every problem (and warning) as
    `file:line: reason`.

    `equivalence_groups` counts brat `*` lines; the reader stores each as relations between
    consecutive members (`equivalence_pairs` of them), which `relations` includes.
    `dropped` (reason -> count, from `fedmedlora.data.mapping`) is included when given."""
    docs = result.documents
    entities: Counter[str] = Counter(e.type for d in docs for e in d.entities)
    relations: Counter[str] = Counter(r.type for d in docs for r in d.relations)
    groups: Counter[str] = Counter(g["type"] for d in docs for g in d.meta.get("equivalences", ()))
    doc_relations: Counter[str] = Counter(
        r["type"] for d in docs for r in d.meta.get("doc_relations", ())
    )
    attributes: Counter[str] = Counter(
        f"{a['type']}={a['value']}" for d in docs for a in d.meta.get("attributes", ())
    )
    stats: dict[str, Any] = {
        "documents": len(docs),
        "characters": sum(len(d.text) for d in docs),
        "entities": sum(entities.values()),
        "entity_types": _by_count(entities),
        "discontinuous_entities": sum(1 for d in docs for e in d.entities if e.fragments),
        "relations": sum(relations.values()),
        "relation_types": _by_count(relations),
        "equivalence_groups": _by_count(groups),
        "equivalence_pairs": sum(
            len(g["members"]) - 1 for d in docs for g in d.meta.get("equivalences", ())
        ),
        "document_relations": _by_count(doc_relations),
        "attributes": _by_count(attributes),
        "problems": [str(p) for p in result.problems],
        "warnings": [str(w) for w in warnings or ()],
    }
    if dropped is not None:
        stats["dropped"] = _by_count(Counter(dropped))
    return stats


def _table(title: str, label: str, counts: Mapping[str, int], share: bool) -> Table:
    total = sum(counts.values()) or 1
    table = Table(title=title, title_justify="left")
    table.add_column(label)
    table.add_column("count", justify="right")
    if share:
        table.add_column("%", justify="right")
    for name, n in counts.items():
        table.add_row(name, f"{n:,}", *([f"{100 * n / total:.1f}"] if share else []))
    return table


def _equivalence_note(stats: Mapping[str, Any]) -> str:
    groups = sum(stats["equivalence_groups"].values())
    if not groups:
        return ""
    return (
        f"; {groups:,} equivalence groups stored as {stats['equivalence_pairs']:,} "
        "pairwise relations"
    )


def render_stats(stats: Mapping[str, Any], console: Console, title: str = "") -> None:
    """Print `corpus_stats` output: a summary line, one table per non-empty breakdown,
    then every problem on its own unwrapped line (so it stays greppable)."""
    if title:
        console.print(title, style="bold", markup=False)
    console.print(
        f"{stats['documents']:,} documents, {stats['characters']:,} characters, "
        f"{stats['entities']:,} entities ({len(stats['entity_types'])} types, "
        f"{stats['discontinuous_entities']:,} discontinuous), "
        f"{stats['relations']:,} relations ({len(stats['relation_types'])} types)"
        + _equivalence_note(stats),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    sections = [
        ("Entities by type", "entity type", "entity_types"),
        ("Relations by type", "relation type", "relation_types"),
        ("Equivalence groups (brat *)", "type", "equivalence_groups"),
        ("Document-level relations", "type", "document_relations"),
        ("Attributes", "attribute=value", "attributes"),
    ]
    for heading, label, key in sections:
        if stats.get(key):
            console.print(_table(heading, label, stats[key], share=True))
    if stats.get("dropped"):  # entities and relations mixed: shares would mislead
        console.print(_table("Dropped by the mapping", "reason", stats["dropped"], share=False))
    problems = stats["problems"]
    console.print(f"{len(problems)} problem(s) found", style="bold" if problems else None)
    for line in problems:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    for line in stats.get("warnings", ()):
        console.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)
