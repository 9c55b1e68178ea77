"""`fedmedlora demo` and `fedmedlora run`: a federated run in Flower's Simulation Engine."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fedmedlora.cli.common import console, parse_overrides, quiet_libraries, user_errors
from fedmedlora.config import RunConfig
from fedmedlora.config_check import preflight
from fedmedlora.evaluation.tracking import Backend
from fedmedlora.federation.methods.base import methods as aggregation_methods

AGGREGATION_HELP = (
    "aggregation method: "
    + ", ".join(aggregation_methods())
    + " (default: the config's federation.aggregation.method)"
)


TRACK_HELP = (
    "log to an experiment tracker, "
    + " or ".join(Backend.__args__)  # type: ignore[attr-defined]
    + " (repeat for both; settings: the config's tracking block)"
)


def _overrides(
    set_: list[str] | None, aggregation: str | None, track: list[str] | None = None
) -> dict[str, Any]:
    overrides = parse_overrides(set_)
    if aggregation is not None:
        overrides["federation.aggregation.method"] = aggregation
    if track:
        overrides["tracking.backends"] = list(dict.fromkeys(track))
    return overrides


class ProgressPrinter:
    """Prints the run as it happens: phases, per-site scores, timings."""

    def __init__(self) -> None:
        self.began = time.perf_counter()

    def _t(self) -> str:
        return f"[dim]{time.perf_counter() - self.began:6.0f}s[/]"

    def __call__(self, event: str, rnd: int, payload: Any) -> None:
        if event == "resumed":
            console.print(f"{self._t()} resumed after round {rnd} from the checkpoint")
        elif event == "zero-shot":
            console.print(f"{self._t()} zero-shot evaluation of the base model at every site")
        elif event == "trained":
            parts = ", ".join(
                f"{s}: loss {m.get('train-loss', float('nan')):.3f}"
                for s, m in sorted(payload.items())
            )
            console.print(f"{self._t()} round {rnd}: aggregated {len(payload)} adapters ({parts})")
        elif event == "evaluated":
            table = Table(title=f"round {rnd}" + (" (zero-shot)" if rnd == 0 else ""))
            for col in (
                "site",
                "entity strict F1",
                "entity lenient F1",
                "relation strict F1",
                "relation lenient F1",
            ):
                table.add_column(col, justify="right" if "F1" in col else "left")
            for site, scores in sorted(payload.items()):
                s = scores.summary()
                table.add_row(
                    site,
                    *(
                        f"{s[k]:.3f}"
                        for k in (
                            "entity_strict_f1",
                            "entity_lenient_f1",
                            "relation_strict_f1",
                            "relation_lenient_f1",
                        )
                    ),
                )
            console.print(table)


def execute(config: RunConfig, out: Path, resume: bool = False) -> dict[str, Any]:
    from fedmedlora.apps.simulation import simulate

    quiet_libraries()
    console.print(
        f"[bold]fedmedlora[/] run [cyan]{config.name}[/]: model {config.model.name}, "
        f"sites {', '.join(config.data.site_names)}, {config.federation.rounds} rounds "
        f"-> {out}"
    )
    results = simulate(config, out, listener=ProgressPrinter(), resume=resume)
    final, zero = results.get("final", {}), results.get("zero_shot", {})
    if final:
        z = zero.get("micro", {}).get("entity_strict_f1")
        console.print(
            f"[bold green]done[/] in {results['run']['seconds']:.0f}s: entity strict F1 (micro) "
            + (f"{z:.3f} zero-shot -> " if z is not None else "")
            + f"{final['micro']['entity_strict_f1']:.3f} federated. "
            f"Report: {out / 'report.md'}, adapter: "
            + str(
                out
                / (
                    "shared_adapter.safetensors"
                    if (out / "shared_adapter.safetensors").is_file()
                    else "adapter"
                )
            )
        )
    tracked = results.get("tracking", {})
    if "mlflow" in tracked:
        mlflow = tracked["mlflow"]
        console.print(f"tracked: MLflow run {mlflow['run_id']} in {mlflow['uri']}", soft_wrap=True)
    if "tensorboard" in tracked:
        console.print(f"tracked: TensorBoard events in {tracked['tensorboard']['dir']}")
    for warning in tracked.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    return results


@user_errors
def demo(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/demo"),
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override, e.g. federation.rounds=2")
    ] = None,
    aggregation: Annotated[str | None, typer.Option(help=AGGREGATION_HELP)] = None,
    track: Annotated[list[str] | None, typer.Option(help=TRACK_HELP)] = None,
) -> None:
    """Run the whole path on the embedded default: three synthetic hospitals, SmolLM2-135M,
    Fed-MedLoRA on Flower's Simulation Engine; writes results.json, report.md and plots."""
    execute(preflight(None, _overrides(set_, aggregation, track)), out)


@user_errors
def run(
    config: Annotated[Path, typer.Argument(help="run config (YAML)")],
    out: Annotated[Path | None, typer.Option(help="output folder (default runs/<name>)")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override, e.g. train.local_steps=20")
    ] = None,
    aggregation: Annotated[str | None, typer.Option(help=AGGREGATION_HELP)] = None,
    resume: Annotated[
        bool, typer.Option(help="continue a killed run from the checkpoint in --out")
    ] = False,
    track: Annotated[list[str] | None, typer.Option(help=TRACK_HELP)] = None,
) -> None:
    """Run a federation described by a config file in Flower's Simulation Engine (after
    the checks of `fedmedlora check`: nothing starts while the config has a problem)."""
    cfg = preflight(config, _overrides(set_, aggregation, track))
    execute(cfg, out or Path("runs") / cfg.name, resume=resume)
