"""`fedmedlora personalize`: after federation, a site tunes the federated adapter on its
own data (LP-FT: first only B, then every adapter weight), at the site, and compares it
with the federated adapter on its own test split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedmedlora.cli.common import console, quiet_libraries, user_errors
from fedmedlora.cli.run_cmd import TRACK_HELP
from fedmedlora.config import load_config
from fedmedlora.errors import ConfigError
from fedmedlora.evaluation.results import HEADLINE, write_json_atomic
from fedmedlora.evaluation.tracking import Tracking, flatten


@user_errors
def personalize(
    config: Annotated[Path, typer.Argument(help="the federation's run config (YAML)")],
    adapter: Annotated[Path, typer.Option(help="the federated adapter (PEFT folder)")],
    out: Annotated[Path, typer.Option(help="output folder for the personalized adapter")],
    site: Annotated[str | None, typer.Option(help="a site of the run config")] = None,
    site_config: Annotated[
        Path | None, typer.Option(help="this site's own site file (as its SuperNode uses)")
    ] = None,
    head_steps: Annotated[
        int | None, typer.Option(help="steps on B (and a head) only; default train.local_steps")
    ] = None,
    full_steps: Annotated[
        int | None, typer.Option(help="then steps on every adapter weight; default the same")
    ] = None,
    track: Annotated[list[str] | None, typer.Option(help=TRACK_HELP)] = None,
) -> None:
    """Personalize the federated adapter for one site and score both on its test split."""
    from fedmedlora.federation.methods.hetero_rank import fit_rank
    from fedmedlora.model.lora import BASE_RESIDUAL, save_adapter
    from fedmedlora.recipe.protocols import load_peft_adapter
    from fedmedlora.recipe.protocols import personalize as lpft
    from fedmedlora.recipe.site_setup import site_recipe

    quiet_libraries()
    if (site is None) == (site_config is None):
        raise ConfigError("give exactly one of --site NAME or --site-config PATH")
    if not (adapter / "adapter_model.safetensors").is_file():
        raise ConfigError(f"{adapter}: not a PEFT adapter folder (no adapter_model.safetensors)")
    run = load_config(config, {"tracking.backends": list(dict.fromkeys(track))} if track else None)
    steps = run.train.local_steps
    head = steps if head_steps is None else head_steps
    full = steps if full_steps is None else full_steps
    local = site_recipe(run.recipe(), site or "", str(site_config or ""))
    name = local.site.spec.name
    if not local.site.test:
        raise ConfigError(f"site {name}: no test documents to compare on")
    # The site's own tracker: what it logs (its own scores) stays at the site.
    tracking = Tracking.open(run.tracking, out, f"{run.name}-{name}-personalized")
    tracking.start(
        {"site": name, "adapter": str(adapter), "head_steps": str(head), "full_steps": str(full)}
        | flatten(local.recipe.model_dump(mode="json", by_alias=True))
    )
    status = "failed"
    try:
        # A FedEx-LoRA adapter is trained on offset base weights: the personal adapter
        # starts from them, and keeps them.
        try:
            federated = load_peft_adapter(adapter, model=local.lm.model)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        start = fit_rank(local, federated)
        console.print(f"site [cyan]{name}[/]: scoring the federated adapter")
        before, _ = local.evaluate(start)
        tracking.log(0, {f"{name}/{k}": v for k, v in before.summary().items() if k in HEADLINE})
        console.print(f"LP-FT: {head} steps on B only, then {full} on every adapter weight")
        state, stats = lpft(local, start, head_steps=head, full_steps=full)
        after, _ = local.evaluate(None)
        losses = {f"train/phase{i}-loss": s.mean_loss for i, s in enumerate(stats, 1)}
        tracking.log(
            1, {f"{name}/{k}": v for k, v in after.summary().items() if k in HEADLINE} | losses
        )
        save_adapter(local.lm.model, state, out / "personal_adapter")
        if (adapter / BASE_RESIDUAL).is_file():  # copied, not read twice: it can be GBs
            shutil.copyfile(adapter / BASE_RESIDUAL, out / "personal_adapter" / BASE_RESIDUAL)
        table = Table(title=f"{name}: federated vs personalized ({len(local.site.test)} test docs)")
        table.add_column("adapter")
        for key in HEADLINE:
            table.add_column(key.replace("_", " "), justify="right")
        result = {"site": name, "head_steps": head, "full_steps": full}
        for label, scores in (("federated", before), ("personalized", after)):
            summary = scores.summary()
            table.add_row(label, *(f"{summary[k]:.3f}" for k in HEADLINE))
            result[label] = {**summary, "detail": scores.as_dict()}
        result["train_loss"] = [s.mean_loss for s in stats]
        write_json_atomic(result, out / "personalize.json")
        status = "completed"
    finally:
        tracking.finish(status, [out / "personalize.json", out / "personal_adapter"])
    console.print(table)
    console.print(f"personalized adapter: {out / 'personal_adapter'}")
    typer.echo(
        json.dumps({k: result[k]["entity_strict_f1"] for k in ("federated", "personalized")})
    )
