"""`fedmedlora plan RUN.yaml`: a site's memory and the run's traffic, before any weights
are downloaded (the model's config.json is all it reads)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fedmedlora.cli.common import parse_overrides, user_errors
from fedmedlora.config import RunConfig, load_config
from fedmedlora.errors import ConfigError
from fedmedlora.model.memory import DTYPE_BYTES, Shape, plan_memory, plan_traffic


def model_config_path(name: str, given: Path | None) -> Path:
    """config.json from --model-config, a local folder or short name, or the hub cache."""
    if given is not None:
        path = given / "config.json" if given.is_dir() else given
        if not path.is_file():
            raise ConfigError(f"{given}: no config.json there")
        return path
    from fedmedlora.model.registry import SHORT_NAMES, resolve_model

    local = Path(name).expanduser()
    if name in SHORT_NAMES or local.exists():
        return Path(resolve_model(name)) / "config.json"
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return Path(cached)
    raise ConfigError(
        f"model {name!r}: its config.json is not available offline; "
        "pass --model-config path/to/config.json"
    )


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def planned_device(device: str) -> str:
    """cpu or gpu: `model.device` (auto: what this machine has; cuda, xpu, mps: gpu)."""
    from fedmedlora.model.loading import pick_device

    if device == "auto":
        return pick_device(device).type if pick_device(device).type == "cpu" else "gpu"
    return device if device in ("cpu", "gpu") else "gpu"


def planned_precision(precision: str, device: str) -> str:
    """`model.precision` as the run would resolve it: auto is bf16 autocast on a GPU
    (all since Ampere) and on a CPU that runs bf16 fast."""
    import torch

    from fedmedlora.model.loading import resolve_precision

    if precision != "auto" or device == "gpu":
        return "bf16-autocast" if precision == "auto" else precision
    return resolve_precision(precision, torch.device("cpu"))


def build_plan(cfg: RunConfig, config_json: Path, device: str | None = None) -> dict:
    try:
        shape = Shape.from_file(config_json)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{config_json}: cannot read the model config ({exc})") from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    m, lora, train, fed = cfg.model, cfg.lora, cfg.train, cfg.federation
    device = planned_device(device or m.device)
    common = dict(
        dtype=m.dtype,
        quantization=m.quantization,
        rank=lora.rank,
        target_modules=lora.target_modules,
        dropout=lora.dropout,
        batch_size=train.batch_size,
        length=cfg.task.max_length,
        autocast_bf16=planned_precision(m.precision, device) == "bf16-autocast",
        attention=m.attention,
        device=device,
    )
    memory = {
        "without_checkpointing": plan_memory(shape, checkpointing=False, **common).as_dict(),
        "with_checkpointing": plan_memory(shape, checkpointing=True, **common).as_dict(),
    }
    evaluations = int(fed.evaluate_zero_shot) + (
        fed.rounds // fed.evaluate_every if fed.evaluate_every else 1
    )
    traffic = plan_traffic(
        shape,
        rank=lora.rank,
        target_modules=lora.target_modules,
        wire_bytes=4 if fed.adapter_wire_dtype == "float32" else 2,
        model_bytes=DTYPE_BYTES[m.dtype],
        sites=len(cfg.data.site_names),
        rounds=fed.rounds,
        evaluations=evaluations,
    ).as_dict()
    return {
        "model": m.name,
        "model_config": str(config_json),
        "parameters": shape.params,
        "settings": {**common, "checkpointing": train.gradient_checkpointing},
        "memory_per_site": memory,
        "traffic": {**traffic, "sites": len(cfg.data.site_names), "rounds": fed.rounds},
    }


def print_plan(plan: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    s = plan["settings"]
    out = Console()
    out.print(
        f"[bold]{plan['model']}[/]: {plan['parameters'] / 1e9:.2f}B parameters, "
        f"{s['dtype']} weights, quantization {s['quantization']}, LoRA r{s['rank']}, "
        f"batch {s['batch_size']} x {s['length']} tokens, "
        f"{'bf16 autocast' if s['autocast_bf16'] else 'no autocast'}, on a {s['device']}"
    )
    table = Table(title="memory per site (one training step)")
    table.add_column("")
    table.add_column("without checkpointing", justify="right")
    table.add_column("with checkpointing", justify="right")
    a, b = (
        plan["memory_per_site"]["without_checkpointing"],
        plan["memory_per_site"]["with_checkpointing"],
    )
    rows = [
        ("base weights", "weights"),
        ("LoRA parameters", "lora"),
        ("LoRA gradients", "gradients"),
        ("optimizer state (AdamW)", "optimizer"),
        ("logits (target tail)", "logits"),
    ]
    for label, key in rows:
        table.add_row(label, _gib(a[key]), _gib(b[key]))
    table.add_row("activations", _gib(a["activations"]), _gib(b["activations_checkpointed"]))
    if a["autocast_copies"]:
        table.add_row(
            "bf16 copies of frozen weights (autocast)",
            _gib(a["autocast_copies"]),
            _gib(b["autocast_copies_checkpointed"]),
        )
    if a["allocator"]:
        table.add_row("CPU allocator (glibc heap)", _gib(a["allocator"]), _gib(b["allocator"]))
    table.add_row("[bold]total", f"[bold]{_gib(a['total'])}", f"[bold]{_gib(b['total'])}")
    out.print(table)
    t = plan["traffic"]
    ratio = t["full_model_run_bytes"] / t["run_bytes"]
    out.print(
        f"adapter: {_gib(t['adapter_bytes'])} each way per site; "
        f"one round, {t['sites']} sites: {_gib(t['round_bytes'])}; "
        f"whole run ({t['rounds']} rounds + evaluations): {_gib(t['run_bytes'])} "
        f"vs {_gib(t['full_model_run_bytes'])} for full-model FedAvg ({ratio:,.0f}x less)"
    )


@user_errors
def plan(
    config: Annotated[Path, typer.Argument(help="run config (YAML)")],
    model_config: Annotated[
        Path | None,
        typer.Option(help="the model's config.json (or its folder), if not found from model.name"),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override, e.g. model.quantization=nf4")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    device: Annotated[
        str | None,
        typer.Option(help="cpu or gpu: plan for that device (default: model.device here)"),
    ] = None,
) -> None:
    """Estimate each site's memory and the run's traffic from the model's config only."""
    if device not in (None, "cpu", "gpu"):
        raise ConfigError(f"--device must be cpu or gpu, got {device!r}")
    cfg = load_config(config, parse_overrides(set_))
    result = build_plan(cfg, model_config_path(cfg.model.name, model_config), device)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        print_plan(result)
