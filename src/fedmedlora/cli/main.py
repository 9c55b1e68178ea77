"""Entry point: `fedmedlora --help`."""

from __future__ import annotations

import typer

from fedmedlora.cli import run_cmd, score_cmd

app = typer.Typer(
    name="fedmedlora",
    help="Federated LoRA fine-tuning of LLMs for clinical information extraction.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(run_cmd.demo)
app.command()(run_cmd.run)
app.command()(score_cmd.score)


if __name__ == "__main__":
    app()
