"""`fedmedlora extract`: annotate new notes with a base model, optionally plus an adapter.
It is the same inference path the federated evaluation and the baselines use."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from fedmedlora.cli.common import console, quiet_libraries, user_errors
from fedmedlora.errors import ConfigError


def _base_model_of(adapter: Path) -> str:
    try:
        cfg = json.loads((adapter / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{adapter}: not a PEFT adapter folder ({exc})") from None
    name = cfg.get("base_model_name_or_path")
    if not name:
        raise ConfigError(f"{adapter}: adapter_config.json names no base model; pass --model")
    return name


def check_outputs(out: Path, brat: Path | None) -> None:
    """Where results go, checked before hours of generation: a file in a writable folder."""
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; give the JSONL file to write")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"--out {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"--out {out}: folder {parent} is not writable")
    if brat is not None and brat.exists() and not brat.is_dir():
        raise ConfigError(f"--brat {brat}: is a file; give a folder")


def check_adapter(adapter: Path, model_name: str) -> None:
    """The adapter against the base model's architecture (config.json on the meta
    device, no weights loaded): every reason it would not fit, before anything loads."""
    from fedmedlora.model.loading import meta_model
    from fedmedlora.model.lora import adapter_problems
    from fedmedlora.model.registry import resolve_model

    recorded = _base_model_of(adapter) if (adapter / "adapter_config.json").is_file() else None
    try:
        model = meta_model(resolve_model(model_name))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model {model_name!r}: cannot read its config.json ({exc})") from None
    problems = adapter_problems(adapter, model)
    if problems:
        trained = f" (trained on {recorded})" if recorded and recorded != model_name else ""
        raise ConfigError(
            f"{adapter}: adapter does not fit model {model_name!r}{trained}: " + "; ".join(problems)
        )
    if recorded and recorded != model_name:
        console.print(
            f"[yellow]warning:[/] {adapter} was trained on {recorded!r}; its shapes fit "
            f"{model_name!r}, which is used",
            highlight=False,
        )


def read_inputs(path: Path):
    from fedmedlora.data.formats.jsonl import read_jsonl
    from fedmedlora.data.formats.plaintext import read_text_notes

    if not path.exists():
        raise ConfigError(f"{path}: no such file or folder")
    if path.is_dir() or path.suffix == ".txt":
        return read_text_notes(path).raise_if_problems()
    return [
        d.model_copy(update={"entities": [], "relations": []})
        for d in read_jsonl(path).raise_if_problems()
    ]


@user_errors
def extract(
    input: Annotated[
        Path,
        typer.Option("--input", help="a folder of .txt notes, a .txt file, or JSONL documents"),
    ],
    out: Annotated[Path, typer.Option("--out", help="predicted annotations (JSONL)")],
    model: Annotated[
        str | None,
        typer.Option(
            help="base model: short name, folder or hub id (default: the adapter's base model)"
        ),
    ] = None,
    adapter: Annotated[
        Path | None, typer.Option(help="PEFT adapter folder, e.g. a run's adapter/")
    ] = None,
    brat: Annotated[Path | None, typer.Option(help="also write brat .txt/.ann here")] = None,
    entity_types: Annotated[
        list[str] | None,
        typer.Option(
            "--entity-type", help="types to extract (repeatable); default: all schema types"
        ),
    ] = None,
    schema: Annotated[str, typer.Option(help="schema name or YAML file")] = "clinical",
    zero_shot_prompt: Annotated[
        bool | None,
        typer.Option(
            "--zero-shot-prompt/--tuned-prompt",
            help="instructions and type definitions in the prompt (default: only "
            "without an adapter)",
        ),
    ] = None,
    max_chunk_tokens: Annotated[int, typer.Option(help="note tokens per window")] = 48,
    batch_size: Annotated[int, typer.Option(help="generation batch size")] = 16,
    max_new_tokens: Annotated[int, typer.Option(help="generation cap per window")] = 256,
    constrained: Annotated[
        bool,
        typer.Option(
            "--constrained/--no-constrained",
            help="copy-constrained decoding: the output is the note's text plus valid tags",
        ),
    ] = True,
    speculate_tokens: Annotated[
        int,
        typer.Option(
            min=0, max=64, help="copy speculation: tokens checked per forward pass (0: off)"
        ),
    ] = 8,
    precision: Annotated[str, typer.Option(help="auto, fp32 or bf16-autocast")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    dtype: Annotated[str, typer.Option(help="base weights: fp32, bf16 or fp16")] = "fp32",
    quantization: Annotated[
        str, typer.Option(help="none, or nf4/int8 (bitsandbytes) for a big base")
    ] = "none",
) -> None:
    """Extract entities and relations from notes; writes JSONL (and optionally brat)."""
    quiet_libraries()
    from fedmedlora.data.formats.jsonl import write_jsonl
    from fedmedlora.data.schema import load_schema
    from fedmedlora.evaluation.inference import GenerationSettings
    from fedmedlora.evaluation.inference import extract as run_extract
    from fedmedlora.model.loading import (
        load_causal_lm,
        load_tokenizer,
        pick_device,
        resolve_precision,
    )
    from fedmedlora.task.prompt import PromptStyle

    sch = load_schema(schema)
    types = entity_types or sch.entity_types
    sch.check_types(types, [])
    check_outputs(out, brat)
    dev = pick_device(device)
    precision = resolve_precision(precision, dev)
    docs = read_inputs(input)
    name = model or (_base_model_of(adapter) if adapter else None)
    if name is None:
        raise ConfigError("give --model, --adapter, or both")
    if adapter is not None:
        check_adapter(adapter, name)
    tokenizer = load_tokenizer(name)
    lm = load_causal_lm(name, dev, dtype=dtype, quantization=quantization)
    if adapter is not None:
        from peft import PeftModel

        from fedmedlora.model.lora import apply_base_residual

        try:
            lm = PeftModel.from_pretrained(lm, adapter).eval()
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ConfigError(f"{adapter}: PEFT cannot load this adapter: {exc}") from None
        try:
            apply_base_residual(lm, adapter)  # FedEx-LoRA's; no file, nothing to do
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    style = PromptStyle(zero_shot=adapter is None if zero_shot_prompt is None else zero_shot_prompt)
    settings = GenerationSettings(
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        constrained=constrained,
        speculate_tokens=speculate_tokens,
    )
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"extracting from {len(docs)} notes", total=None)
        preds, stats = run_extract(
            lm,
            tokenizer,
            docs,
            types,
            sch,
            max_chunk_tokens=max_chunk_tokens,
            settings=settings,
            device=dev,
            precision=precision,
            style=style,
            on_batch=lambda n: progress.advance(task, n),
        )
    write_jsonl(preds, out)
    if brat is not None:
        from fedmedlora.data.formats.brat import write_brat

        write_brat(preds, brat)
    n_ent = sum(len(d.entities) for d in preds)
    n_rel = sum(len(d.relations) for d in preds)
    console.print(
        f"{len(preds)} notes, {stats.chunks} windows, {n_ent} entities, {n_rel} "
        f"relations in {stats.seconds:.1f}s -> {out}" + (f" and {brat}" if brat else "")
    )
    console.print(
        f"[dim]{stats.windows_per_second:.2f} windows/s, {stats.generated_tokens} tokens, "
        f"{stats.forward_passes_per_token:.2f} forward passes per token "
        f"({'constrained' if constrained else 'unconstrained'}"
        f"{f', speculating {speculate_tokens}' if constrained and speculate_tokens else ''})[/]"
    )
    if stats.issues:
        console.print(f"[dim]output repairs: {dict(stats.issues)}[/]")
