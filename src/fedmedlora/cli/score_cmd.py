"""`fedmedlora score`: strict and lenient metrics of one annotation file against another."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fedmedlora.cli.common import console, user_errors
from fedmedlora.data.formats.jsonl import load_jsonl
from fedmedlora.evaluation.metrics import score_corpus


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
