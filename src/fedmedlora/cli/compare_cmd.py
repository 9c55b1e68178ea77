"""`fedmedlora compare`: runs side by side (Markdown table and an F1-per-round plot)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markdown import Markdown

from fedmedlora.cli.common import console, user_errors


@user_errors
def compare(
    runs: Annotated[list[Path], typer.Argument(help="run folders (each with results.json)")],
    out: Annotated[Path, typer.Option(help="where compare.md and compare_f1.png go")] = Path(
        "runs/compare"
    ),
) -> None:
    """Compare runs on the same sites and types: F1 per site and micro (with intervals
    where the runs have them), traffic, time, the settings that differ, F1 per round."""
    from fedmedlora.evaluation.compare import load_runs, markdown, write_comparison

    compared = load_runs(runs)
    written = write_comparison(compared, out)
    console.print(Markdown(markdown(compared)))
    console.print("written: " + ", ".join(str(p) for p in written))
