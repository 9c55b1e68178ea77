"""`fedmedlora data download NAME --dest DIR`: fetch a public corpus and verify it.

Failures raise FedMedLoRAError subclasses (fedmedlora.data.download), which the main app
shows without a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedmedlora.data.download import MIRROR_ENV, download_dataset, load_catalog


def _corpus_names(incomplete: str) -> list[str]:
    return [name for name in sorted(load_catalog()) if name.startswith(incomplete)]


def download(
    name: Annotated[
        str,
        typer.Argument(
            help="Corpus to fetch: maccrobat, chia, bc5cdr or ncbi_disease.",
            autocompletion=_corpus_names,
            show_default=False,
        ),
    ],
    dest: Annotated[
        Path,
        typer.Option(
            "--dest",
            help="Data folder; the corpus goes to DEST/NAME, laid out like ../shared/data.",
            file_okay=False,
            show_default=False,
        ),
    ],
    force: Annotated[
        bool,
        typer.Option("--force", help="Download again even if DEST/NAME is present."),
    ] = False,
    mirror: Annotated[
        str | None,
        typer.Option(
            "--mirror",
            envvar=MIRROR_ENV,
            metavar="BASE_URL",
            help="Fetch every archive from BASE_URL/NAME/<archive file> instead of its "
            "official URL (http://, https:// or file://).",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars, only the outcome.")
    ] = False,
) -> None:
    """Download a public corpus from its official source and verify its pinned checksums."""
    result = download_dataset(name, dest, force=force, mirror=mirror, progress=not quiet)
    if result.status == "present":
        typer.echo(
            f"{result.name} is already present in {result.path} and matches its pinned "
            "checksums; nothing to do (--force downloads it again)."
        )
    else:
        typer.echo(f"Downloaded {result.name}: {result.files} files verified in {result.path}.")
