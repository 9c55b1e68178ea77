"""`fedmedlora score`: strict and lenient metrics of one annotation file against another."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fedmedlora.cli.common import console, user_errors
from fedmedlora.data.document import Document
from fedmedlora.data.formats.jsonl import load_jsonl
from fedmedlora.errors import ConfigError
from fedmedlora.evaluation.metrics import score_corpus


def check_pairing(gold: list[Document], pred: list[Document], gold_path: Path, pred_path: Path):
    """Offsets only mean something over the same text: a prediction made on another
    version of a note would score a silent 0, so it is an error naming the ids."""
    texts = {d.id: d.text for d in gold}
    differ = [d.id for d in pred if d.id in texts and texts[d.id] != d.text]
    if differ:
        raise ConfigError(
            f"{pred_path}: {len(differ)} document(s) whose text differs from the gold "
            f"document's of the same id in {gold_path}: {', '.join(differ[:10])}"
            + (" ..." if len(differ) > 10 else "")
        )


def check_types(
    asked: list[str] | None, docs: list[Document], option: str, relations: bool = False
) -> None:
    """A type no gold or predicted document has, and that the schema does not define,
    is a typo: refused instead of scored as all zeros."""
    if not asked:
        return
    from fedmedlora.data.schema import load_schema

    schema = load_schema()
    if relations:
        seen = {r.type for d in docs for r in d.relations} | set(schema.relation_types)
    else:
        seen = {e.type for d in docs for e in d.entities} | set(schema.entity_types)
    unknown = [t for t in asked if t not in seen]
    if unknown:
        raise ConfigError(
            f"unknown {option} {', '.join(map(repr, unknown))}: no document has it and the "
            f"schema does not define it (known: {', '.join(sorted(seen))})"
        )


@user_errors
def score(
    gold: Annotated[Path, typer.Option(help="gold annotations (JSONL)")],
    pred: Annotated[Path, typer.Option(help="predicted annotations (JSONL)")],
    entity_types: Annotated[
        list[str] | None,
        typer.Option("--entity-type", help="score only these types (repeatable); default: all"),
    ] = None,
    relation_types: Annotated[
        list[str] | None,
        typer.Option("--relation-type", help="score only these relation types (repeatable)"),
    ] = None,
) -> None:
    """Print entity and relation precision/recall/F1 (strict, lenient; micro and per type)
    as JSON. Documents are paired by id."""
    gold_docs, pred_docs = load_jsonl(gold), load_jsonl(pred)
    check_pairing(gold_docs, pred_docs, gold, pred)
    check_types(entity_types, gold_docs + pred_docs, "--entity-type")
    check_types(relation_types, gold_docs + pred_docs, "--relation-type", relations=True)
    scores, pairing = score_corpus(gold_docs, pred_docs, entity_types, relation_types)
    if pairing.missing_predictions:
        console.print(
            f"[yellow]warning:[/] {len(pairing.missing_predictions)} gold document(s) "
            f"have no prediction (scored as empty): {pairing.missing_predictions[:5]}"
        )
    if pairing.unmatched_predictions:
        console.print(
            f"[yellow]warning:[/] {len(pairing.unmatched_predictions)} predicted "
            f"document(s) have no gold and were ignored: "
            f"{pairing.unmatched_predictions[:5]}"
        )
    out = {
        "documents": len(gold_docs),
        **scores.as_dict(),
        "missing_predictions": pairing.missing_predictions,
        "unmatched_predictions": pairing.unmatched_predictions,
    }
    typer.echo(json.dumps(out, indent=2))
