"""Extraction speed and faithfulness: copy-constrained decoding with copy speculation
against plain greedy decoding, on the same windows with the same adapter.

Variants (all through `evaluation.inference.extract`, the one inference path):
- `greedy-batched`: plain greedy `model.generate`, batched (the path before issue 15);
- `greedy-single`: the same, one window at a time;
- `constrained`: copy-constrained greedy, batched, one token per forward pass;
- `constrained+spec`: the same with copy speculation (`--speculate` tokens per pass).

For each: windows/s, generated tokens/s, forward passes per output token, strict and
lenient entity F1 (with a bootstrap 95% interval over windows) and parse issues. The
constrained variants must produce the same tokens (speculation is exact), so their F1 is
identical; the benchmark checks it.

Without `--adapter` it trains one quickly: the demo recipe on one synthetic site's
training notes for `--train-steps` steps (a few minutes on a 2-core CPU). Test windows
are a seeded sample of that site's held-out notes, or with `--data` (../shared/data) of
the held-out documents of the three real-corpus sites of clinical_ie.py (`--windows` per
site; each site's windows are prompted with its own entity types).

    .venv/bin/python benchmarks/extraction_speed.py                       # demo-like
    .venv/bin/python benchmarks/extraction_speed.py --adapter runs/x/adapter
    .venv/bin/python benchmarks/extraction_speed.py --adapter ADAPTER --data ../shared/data

Writes docs/measured/extraction_speed.json (--out) and prints a table.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from fedmedlora.cli.common import quiet_libraries
from fedmedlora.config import load_config
from fedmedlora.data.document import Document
from fedmedlora.data.schema import load_schema
from fedmedlora.data.sites import load_source, sample_windows, synthetic_site
from fedmedlora.evaluation.bootstrap import bootstrap_f1, key_slice, micro_counts
from fedmedlora.evaluation.decoding import DecodeStats
from fedmedlora.evaluation.inference import ExtractionStats, GenerationSettings, extract
from fedmedlora.evaluation.metrics import Scores, score_corpus
from fedmedlora.evaluation.results import write_json_atomic
from fedmedlora.model.lora import load_adapter_state, save_adapter
from fedmedlora.recipe.site_recipe import SiteRecipe, initial_adapter
from fedmedlora.task.prompt import PromptStyle
from measuring import real_site_sources  # beside this script

VARIANTS = ("greedy-batched", "greedy-single", "constrained", "constrained+spec")


def settings_for(variant: str, args: argparse.Namespace, k: int) -> GenerationSettings:
    return GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        batch_size=1 if variant == "greedy-single" else args.batch_size,
        constrained=variant.startswith("constrained"),
        speculate_tokens=k if variant == "constrained+spec" else 0,
    )


def interval(per_window: list[Scores], windows: list[Document], mode: str, seed: int):
    """Micro entity F1 and its 95% interval, resampling source documents (windows of one
    document move together)."""
    counts = [micro_counts(s)[key_slice("entity", mode)] for s in per_window]
    groups = [str(w.meta.get("source_document", w.id)) for w in windows]
    return bootstrap_f1([counts], groups, seed=seed)


Group = tuple[Any, list[Document]]  # (site spec, its windows)


def measure(
    variant: str, lm, tok, groups: list[Group], schema, args, k: int = 0
) -> tuple[dict[str, Any], list[Document]]:
    seconds, stats, preds, windows = 0.0, ExtractionStats(), [], []
    per_window: list[Scores] = []
    for spec, docs in groups:
        began = time.perf_counter()
        found, s = extract(
            lm,
            tok,
            docs,
            spec.entity_types,
            schema,
            max_chunk_tokens=args.max_chunk_tokens,
            settings=settings_for(variant, args, k),
            device=torch.device("cpu"),
            precision="fp32",
            style=PromptStyle(zero_shot=args.zero_shot),
        )
        seconds += time.perf_counter() - began
        stats.chunks += s.chunks
        stats.generated_tokens += s.generated_tokens
        stats.forward_passes += s.forward_passes
        stats.decoding.add(s.decoding)
        stats.issues.update(s.issues)
        preds += found
        windows += docs
        per_window += [
            score_corpus([g], [p], spec.entity_types, spec.relation_types)[0]
            for g, p in zip(docs, found, strict=True)
        ]
    total = Scores()
    for s in per_window:
        total += s
    summary = total.summary()
    strict = interval(per_window, windows, "strict", args.seed)
    lenient = interval(per_window, windows, "lenient", args.seed)
    row = {
        "variant": f"{variant} k={k}" if variant == "constrained+spec" else variant,
        "windows": stats.chunks,
        "seconds": round(seconds, 2),
        "windows_per_second": round(stats.chunks / seconds, 4),
        "generated_tokens": stats.generated_tokens,
        "tokens_per_second": round(stats.generated_tokens / seconds, 2),
        "forward_passes_per_token": round(stats.forward_passes_per_token, 3),
        **columns(stats.decoding),
        "entity_strict_f1": round(summary["entity_strict_f1"], 4),
        "entity_strict_f1_ci95": strict["ci95"],
        "entity_lenient_f1": round(summary["entity_lenient_f1"], 4),
        "entity_lenient_f1_ci95": lenient["ci95"],
        "parse_issues": dict(sorted(stats.issues.items())),
    }
    return row, preds


def combined(each: list[dict[str, Any]], base: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant's repeats as one row: the median time, and the speed-up over the
    first variant paired repeat by repeat (`x_each`; the same position in the same
    round)."""
    median = statistics.median(r["seconds"] for r in each)
    row = dict(each[0])
    row.update(
        seconds=round(median, 2),
        windows_per_second=round(row["windows"] / median, 4),
        tokens_per_second=round(row["generated_tokens"] / median, 2),
        seconds_each=[r["seconds"] for r in each],
        x_each=[round(b["seconds"] / r["seconds"], 2) for b, r in zip(base, each, strict=True)],
    )
    floors = [r["floor_seconds"] for r in each if r.get("floor_seconds")]
    row["floor_seconds"] = min(floors) if floors else None
    return row


def columns(stats: DecodeStats) -> dict[str, Any]:
    """Where the compute went, in token columns (a pass costs a fixed part plus its
    columns): the prompt tokens and output tokens every decoder must compute, and the rest: padded
    columns (no token: padding, finished windows waiting in their batch), which packing
    rows could remove, and rejected proposals, which it could not.

    With the decoder's timed passes: their cost fitted as `pass_ms + column_ms x
    columns` (least squares), which splits the model's time into a fixed part per pass,
    the needed columns and the wasted ones; and a floor, the needed columns at the
    cheapest seconds per column of any pass. No schedule of the same work (no waste, no
    per-pass cost, every pass as efficient as the best one) is faster on this machine,
    so `greedy seconds / floor` bounds the speed-up any decoder of this work reaches."""
    needed = stats.prompt_tokens + stats.generated_tokens
    out: dict[str, Any] = {
        "columns": stats.columns,
        "prompt_tokens": stats.prompt_tokens,
        "wasted_columns": stats.columns - needed,
        "padded_columns": stats.padded_columns,
        "rejected_columns": stats.rejected_columns,
        "columns_per_token": round(stats.columns / max(stats.generated_tokens, 1), 3),
        "model_calls": stats.model_calls,
        "floor_seconds": None,
    }
    timed = [(c, t) for c, t in stats.passes if c > 0]
    if len(timed) < 3 or len({c for c, _ in timed}) < 2:
        return out
    per_column, per_pass = statistics.linear_regression(*zip(*timed, strict=True))
    cheapest = min(t / c for c, t in timed)
    return out | {
        "model_seconds": round(sum(t for _, t in timed), 2),
        "pass_ms": round(per_pass * 1e3, 2),
        "column_ms": round(per_column * 1e3, 3),
        "split_seconds": {
            "per_pass": round(per_pass * len(timed), 2),
            "needed_columns": round(per_column * needed, 2),
            "wasted_columns": round(per_column * (stats.columns - needed), 2),
        },
        "cheapest_column_ms": round(cheapest * 1e3, 3),
        "floor_seconds": round(cheapest * needed, 2),
    }


def prepare(args: argparse.Namespace):
    overrides = {"train.local_steps": max(1, args.train_steps), "model.name": args.model}
    recipe = load_config(None, overrides).recipe()
    data = synthetic_site(args.site, args.train_docs, args.test_docs, args.seed)
    site = SiteRecipe(recipe, data)
    lm = site.lm
    trained: dict[str, Any] = {}
    if args.adapter:
        from fedmedlora.recipe.protocols import load_peft_adapter

        load_adapter_state(lm.model, load_peft_adapter(args.adapter, model=lm.model))
        trained = {"adapter": str(args.adapter)}
    elif args.train_steps > 0:
        began = time.perf_counter()
        state, stats = site.train(initial_adapter(recipe), 1, args.train_steps)
        if args.save_adapter:
            save_adapter(lm.model, state, args.save_adapter)
        trained = {
            "trained_steps": stats.steps,
            "train_seconds": round(time.perf_counter() - began, 1),
            "train_loss": round(stats.mean_loss, 4),
        }
    if args.data:
        schema = load_schema()
        sources = real_site_sources(
            args.data, test_windows=args.windows, window_chars=args.window_chars
        )
        groups = [(d.spec, d.test) for d in (load_source(s, schema, args.seed) for s in sources)]
    else:
        groups = [
            (data.spec, sample_windows(data.test, args.windows, args.window_chars, args.seed))
        ]
    lm.model.eval()
    return lm, groups, trained


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table: `x` is the speed-up over the first row (with repeats, of the
    median times, then the range of the paired ratios); `ceiling x` is the first row's
    seconds over a row's floor."""
    base = rows[0]["windows_per_second"]
    lines = [
        "| variant | windows/s | x | tokens/s | passes/token | columns/token | ceiling x | "
        "strict F1 [95% CI] | lenient F1 [95% CI] | parse issues |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["entity_strict_f1_ci95"]
        llo, lhi = r["entity_lenient_f1_ci95"]
        issues = sum(r["parse_issues"].values())
        floor = r.get("floor_seconds")
        ceiling = f"{rows[0]['seconds'] / floor:.1f}" if floor else "-"
        x = f"{r['windows_per_second'] / base:.1f}"
        if len(r.get("x_each", [])) > 1 and r is not rows[0]:
            x += f" ({min(r['x_each']):.1f}-{max(r['x_each']):.1f})"
        lines.append(
            f"| {r['variant']} | {r['windows_per_second']:.3f} | "
            f"{x} | {r['tokens_per_second']:.1f} | "
            f"{r['forward_passes_per_token']:.3f} | {r.get('columns_per_token', 0):.2f} | "
            f"{ceiling} | {r['entity_strict_f1']:.3f} "
            f"[{lo:.3f}, {hi:.3f}] | {r['entity_lenient_f1']:.3f} [{llo:.3f}, {lhi:.3f}] | "
            f"{issues} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--adapter", type=Path, help="a PEFT adapter folder (default: train one)")
    ap.add_argument("--save-adapter", type=Path, help="keep the trained adapter here")
    ap.add_argument("--site", default="riverside", help="synthetic site")
    ap.add_argument("--data", type=Path, help="real corpora (../shared/data): their test windows")
    ap.add_argument("--train-docs", type=int, default=40)
    ap.add_argument("--test-docs", type=int, default=6)
    ap.add_argument("--train-steps", type=int, default=40)
    ap.add_argument("--windows", type=int, default=24, help="test windows (per site with --data)")
    ap.add_argument("--window-chars", type=int, default=240)
    ap.add_argument("--max-chunk-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--speculate", type=int, nargs="+", default=[8], help="k (several: a row each)")
    ap.add_argument("--zero-shot", action="store_true", help="the zero-shot prompt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="time every variant this often")
    ap.add_argument("--out", type=Path, default=Path("docs/measured/extraction_speed.json"))
    args = ap.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    schema = load_schema()
    lm, groups, trained = prepare(args)
    torch.set_num_threads(args.threads)  # loading the recipe sets its own thread count
    print(f"{[len(w) for _, w in groups]} windows, {trained}", flush=True)
    outputs: dict[str, list] = {}
    runs = [(v, k) for v in args.variants for k in (args.speculate if v.endswith("spec") else [0])]
    repeats: list[list[dict[str, Any]]] = [[] for _ in runs]
    for r in range(args.repeats):
        # each repeat in another order, so that no variant always runs first or after the
        # same one (a loaded machine's speed drifts within a run)
        for i in [*range(r % len(runs), len(runs)), *range(r % len(runs))]:
            variant, k = runs[i]
            row, preds = measure(variant, lm.model, lm.tokenizer, groups, schema, args, k)
            repeats[i].append(row)
            found = [[(e.start, e.end, e.type) for e in p.entities] for p in preds]
            if outputs.setdefault(row["variant"], found) != found:
                raise SystemExit(f"{row['variant']}: repeat {r} predicted differently")
            print(row, flush=True)
    rows = [combined(each, repeats[0]) for each in repeats]
    spec_rows = [v for v in outputs if v.startswith("constrained+spec")]
    same = None
    if "constrained" in outputs and spec_rows:
        same = all(outputs["constrained"] == outputs[v] for v in spec_rows)
        print(f"constrained and constrained+spec predictions identical: {same}")
    result = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "cpus": __import__("os").cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "adapter": trained,
        "speculation_identical_predictions": same,
        "rows": rows,
        "table": table(rows),
    }
    write_json_atomic(result, args.out)
    print(result["table"])
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
