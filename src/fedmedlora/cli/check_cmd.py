"""`fedmedlora check`: the pre-flight check of a run config, before anything starts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedmedlora.cli.common import console, parse_overrides, user_errors


@user_errors
def check(
    config: Annotated[Path, typer.Argument(help="run config (YAML)")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override, e.g. federation.rounds=2")
    ] = None,
    read: Annotated[
        bool, typer.Option(help="also read every site's files and count their documents")
    ] = True,
    site_files: Annotated[
        bool,
        typer.Option(
            help="check the sites' files, formats and mappings (--no-site-files for a "
            "deployment's study config: each SuperNode checks its own site config)"
        ),
    ] = True,
) -> None:
    """Check a run config without starting, loading or writing anything: every site's
    paths, format, mapping and types, the schema, model, precision and device, and the
    federation settings against the number of sites. Every problem is listed, one line
    each (file:line: reason); exit status 2 if there is any."""
    from fedmedlora.config_check import check_run, summary

    result = check_run(config, parse_overrides(set_), read_data=read, site_files=site_files)
    for note in result.notes:
        console.print(note, highlight=False, soft_wrap=True)
    if result.problems:
        for problem in result.problems:
            console.print(f"[bold red]error:[/] {problem}", highlight=False, soft_wrap=True)
        console.print(f"{len(result.problems)} problem(s) in {config}", highlight=False)
        raise typer.Exit(2)
    console.print(f"[bold green]{summary(result)}[/]", highlight=False, soft_wrap=True)
