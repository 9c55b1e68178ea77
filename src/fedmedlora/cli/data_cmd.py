"""`fedmedlora data ...`: inspect corpora before training on them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedmedlora.cli.common import user_errors
from fedmedlora.data.formats.readers import FORMATS, read_any
from fedmedlora.data.mapping import load_mapping, map_result
from fedmedlora.data.schema import load_schema
from fedmedlora.data.stats import corpus_stats, render_stats

data_app = typer.Typer(
    help="Inspect annotated corpora (brat, PubTator, BioC, JSONL).",
    no_args_is_help=True,
)


@data_app.command("stats")
@user_errors
def stats(
    path: Annotated[Path, typer.Argument(help="A file, or a directory of brat .txt/.ann pairs.")],
    format: Annotated[
        str | None,
        typer.Option("--format", "-f", help=f"One of {', '.join(FORMATS)}; detected if omitted."),
    ] = None,
    mapping: Annotated[
        str | None,
        typer.Option(
            "--mapping", "-m", help="Built-in mapping name or YAML file: count in target terms."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] = False,
) -> None:
    """Count documents, entities and relations by type, and list every problem found
    (file:line: reason). Problems do not make the command fail: they are the report."""
    # Load the mapping first: a bad --mapping should fail before a long read.
    corpus_mapping = load_mapping(mapping) if mapping is not None else None
    result = read_any(path, format)
    dropped = None
    if corpus_mapping is not None:
        schema = load_schema(corpus_mapping.schema_name)
        result, dropped = map_result(result, corpus_mapping, schema)
    numbers = corpus_stats(result, dropped)
    if as_json:
        typer.echo(json.dumps(numbers, indent=2, ensure_ascii=False))
        return
    title = f"{path}" + (f" (mapped with {mapping})" if mapping else "")
    render_stats(numbers, Console(), title=title)
