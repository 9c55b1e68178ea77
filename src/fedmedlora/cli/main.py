"""Entry point: `fedmedlora --help`."""

from __future__ import annotations

import typer

from fedmedlora.cli import (
    check_cmd,
    compare_cmd,
    download_cmd,
    extract_cmd,
    personalize_cmd,
    plan_cmd,
    run_cmd,
    score_cmd,
)
from fedmedlora.cli.common import user_errors
from fedmedlora.cli.data_cmd import data_app
from fedmedlora.cli.deploy_cmd import deploy_app

app = typer.Typer(
    name="fedmedlora",
    help="Federated LoRA fine-tuning of LLMs for clinical information extraction.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(run_cmd.demo)
app.command()(run_cmd.run)
app.command()(check_cmd.check)
app.command()(score_cmd.score)
app.command()(extract_cmd.extract)
app.command()(personalize_cmd.personalize)
app.command()(compare_cmd.compare)
app.command()(plan_cmd.plan)
data_app.command("download")(user_errors(download_cmd.download))
app.add_typer(data_app, name="data")
app.add_typer(deploy_app, name="deploy")


if __name__ == "__main__":
    app()
