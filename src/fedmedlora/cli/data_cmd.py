"""`fedmedlora data ...`: inspect corpora before training on them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console

from fedmedlora.cli.common import user_errors
from fedmedlora.data.checks import Findings, check_duplicates
from fedmedlora.data.formats.readers import FORMATS, read_any
from fedmedlora.data.mapping import load_mapping, map_result
from fedmedlora.data.schema import load_schema
from fedmedlora.data.stats import corpus_stats, render_stats
from fedmedlora.errors import ConfigError

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
    schema: Annotated[
        str, typer.Option(help="Schema (built-in name or YAML) JSONL files are checked against.")
    ] = "clinical",
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] = False,
) -> None:
    """Count documents, entities and relations by type, and list every problem found
    (file:line: reason, one a line) and every warning (the same text under two ids).
    Exits with status 2 when there is any problem, after the full report."""
    # Load the mapping and schema first: a bad option should fail before a long read.
    corpus_mapping = load_mapping(mapping) if mapping is not None else None
    target = load_schema(corpus_mapping.schema_name if corpus_mapping else schema)
    result = read_any(path, format, None if corpus_mapping else target)
    dropped = None
    if corpus_mapping is not None:
        result, dropped = map_result(result, corpus_mapping, target)
    found = Findings()
    check_duplicates([("file", result)], found)
    numbers = corpus_stats(result, dropped, found.warnings)
    if as_json:
        typer.echo(json.dumps(numbers, indent=2, ensure_ascii=False))
    else:
        title = f"{path}" + (f" (mapped with {mapping})" if mapping else "")
        render_stats(numbers, Console(), title=title)
    if result.problems:
        raise typer.Exit(2)


@data_app.command("synthetic")
@user_errors
def synthetic_cmd(
    out: Annotated[Path, typer.Option(help="folder: one sub-folder per site, and run.yaml")],
    site: Annotated[
        list[str] | None, typer.Option(help="a built-in site (repeat); default: the demo's")
    ] = None,
    train_docs: Annotated[
        int | None, typer.Option(min=1, help="per site (default: the demo's)")
    ] = None,
    test_docs: Annotated[
        int | None, typer.Option(min=1, help="per site (default: the demo's)")
    ] = None,
    seed: int = 0,
    model: Annotated[
        str | None,
        typer.Option(help="model for run.yaml (default: the demo's); tiny-random: a dry run"),
    ] = None,
) -> None:
    """Write the demo's synthetic hospitals as JSONL files with a site config each, and a
    run config naming them: data to rehearse a deployment with (docs/deployment.md)."""
    from fedmedlora.config import load_config, parse_config
    from fedmedlora.data.synthetic import SYNTHETIC_SITES
    from fedmedlora.data.synthetic.export import export_site

    demo = load_config(None)
    defaults = demo.data.synthetic
    assert defaults is not None  # the embedded demo is synthetic
    names = list(site or defaults.sites)
    unknown = sorted(set(names) - set(SYNTHETIC_SITES))
    if unknown:
        raise ConfigError(f"unknown synthetic sites {unknown}; known: {list(SYNTHETIC_SITES)}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    n_train = train_docs or defaults.train_docs
    n_test = test_docs or defaults.test_docs
    configs = [export_site(out, n, n_train, n_test, seed) for n in names]
    run = demo.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    run.update(name="rehearsal", seed=seed, model=demo.model.model_dump(mode="json"))
    if model is not None:
        run["model"]["name"] = model
    # Relative to run.yaml. In a deployment each SuperNode reads its own site.yaml; the
    # server only needs the names (and `fedmedlora run` can simulate the same sites).
    sites = []
    for path in configs:
        entry = yaml.safe_load(path.read_text())
        for key in ("train", "test"):
            entry[key] = f"{path.parent.name}/{entry[key]}"
        sites.append(entry)
    run["data"] = {"sites": sites}
    parse_config(run, str(out / "run.yaml"))  # what we write must load
    (out / "run.yaml").write_text(yaml.safe_dump(run, sort_keys=False))
    for path in configs:
        typer.echo(f"site config: {path}")
    typer.echo(f"run config:  {out / 'run.yaml'}")
