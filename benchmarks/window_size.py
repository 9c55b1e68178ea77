"""Window size from data: entity F1 and extraction speed at several `task.max_chunk_tokens`
on the real corpora (issue 15, item 5).

For each size and training seed: an adapter trained with that window size on the pooled
training documents of the three real-corpus sites (MACCROBAT, Chia, BC5CDR; the sites of
clinical_ie.py; pooled, not federated, to fit the budget), then scored on the same test
text at every size: `--spans` seeded stretches of at most `--span-chars` characters per
site, each cut by extraction into windows of at most that many tokens. Same text, so the
speed is compared as characters per second (windows differ in length); F1 comes with a
95% interval resampling source documents (mean over seeds, evaluation.bootstrap).
Extraction is the default: copy-constrained decoding with copy speculation.

With `--adapter` nothing is trained: one adapter (trained at whatever size) is scored at
every size, which measures the inference window alone. Training per size: the same
number of steps and examples per step (a larger window carries more text per example);
`task.max_length` grows with the window (3 x size + 256 tokens: prompt, text and markup)
so no example is dropped for length.

    .venv/bin/python benchmarks/window_size.py --data ../shared/data

Writes docs/measured/window_size.json (--out) and prints a table.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import torch

from fedmedlora.cli.common import quiet_libraries
from fedmedlora.config import load_config
from fedmedlora.data.schema import load_schema
from fedmedlora.data.sites import load_source, sample_windows
from fedmedlora.evaluation.bootstrap import bootstrap_f1, key_slice, micro_counts
from fedmedlora.evaluation.metrics import score_corpus
from fedmedlora.evaluation.results import write_json_atomic
from fedmedlora.model.lora import load_adapter_state
from fedmedlora.recipe.protocols import load_peft_adapter, train_local
from fedmedlora.recipe.site_recipe import loaded_model, predict
from measuring import real_site_sources  # beside this script


def recipe_for(args: argparse.Namespace, size: int, seed: int):
    overrides = {
        "seed": seed,
        "model.name": args.model,
        "task.max_chunk_tokens": size,
        "task.max_length": 3 * size + 256,
        "train.batch_size": args.batch_size,
        "train.learning_rate": args.lr,
        "train.local_steps": args.train_steps,
        "train.warmup_steps": 3,
        "generation.batch_size": args.generation_batch,
    }
    return load_config(None, overrides).recipe().model_copy(update={"threads": args.threads})


def evaluate(recipe, state, sets, args) -> dict[str, Any]:
    """Per test stretch [tp, fp, fn] (strict, lenient), its source document, and speed."""
    load_adapter_state(loaded_model(recipe).model, state)
    strict, lenient, groups = [], [], []
    seconds = chars = windows = tokens = passes = 0
    issues: dict[str, int] = {}
    for spec, docs in sets:
        began = time.perf_counter()
        preds, stats = predict(recipe, docs, spec)
        seconds += time.perf_counter() - began
        windows += stats.chunks
        tokens += stats.generated_tokens
        passes += stats.forward_passes
        chars += sum(len(d.text) for d in docs)
        for name, n in stats.issues.items():
            issues[name] = issues.get(name, 0) + n
        for gold, pred in zip(docs, preds, strict=True):
            counts = micro_counts(
                score_corpus([gold], [pred], spec.entity_types, spec.relation_types)[0]
            )
            strict.append(counts[key_slice("entity", "strict")])
            lenient.append(counts[key_slice("entity", "lenient")])
            groups.append(str(gold.meta.get("source_document", gold.id)))
    return {
        "strict": strict,
        "lenient": lenient,
        "groups": groups,
        "seconds": round(seconds, 1),
        "windows": windows,
        "chars_per_second": round(chars / seconds, 1),
        "windows_per_second": round(windows / seconds, 4),
        "forward_passes_per_token": round(passes / max(tokens, 1), 3),
        "parse_issues": dict(sorted(issues.items())),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sizes", type=int, nargs="+", default=[48, 128, 256])
    ap.add_argument("--seeds", type=int, default=1, help="training seeds per size")
    ap.add_argument(
        "--adapter", type=Path, help="score this PEFT adapter at every size instead of training"
    )
    ap.add_argument("--train-steps", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--max-train-docs", type=int, default=60, help="per site")
    ap.add_argument("--spans", type=int, default=5, help="test stretches per site")
    ap.add_argument("--span-chars", type=int, default=800)
    ap.add_argument("--generation-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("docs/measured/window_size.json"))
    args = ap.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    schema = load_schema()
    sources = real_site_sources(args.data, max_train_docs=args.max_train_docs)
    sites = [load_source(s, schema, args.split_seed) for s in sources]
    sets = [
        (site.spec, sample_windows(site.test, args.spans, args.span_chars, args.split_seed))
        for site in sites
    ]
    print(f"test stretches per site: {[len(d) for _, d in sets]}", flush=True)
    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        runs = []
        for seed in range(args.seeds):
            recipe = recipe_for(args, size, seed)
            if args.adapter:
                run = evaluate(recipe, load_peft_adapter(args.adapter), sets, args)
                run["train_seconds"] = 0.0
            else:
                state, stats = train_local(recipe, sites, args.train_steps, seed=seed)
                run = evaluate(recipe, state, sets, args)
                run.update(
                    train_seconds=round(stats.seconds, 1),
                    train_examples=stats.examples,
                    train_tokens=stats.tokens,
                    final_loss=round(stats.losses[-1], 4),
                )
            runs.append(run)
            print(size, seed, {k: v for k, v in run.items() if k not in ("strict", "lenient")})
        groups = runs[0]["groups"]
        row = {
            "max_chunk_tokens": size,
            "seeds": args.seeds,
            "entity_strict": bootstrap_f1([r["strict"] for r in runs], groups, seed=0),
            "entity_lenient": bootstrap_f1([r["lenient"] for r in runs], groups, seed=0),
            "runs": [
                {k: v for k, v in r.items() if k not in ("strict", "lenient", "groups")}
                for r in runs
            ],
        }
        rows.append(row)
        write_json_atomic(result(args, sets, rows), args.out)
    print(table(rows))
    print(f"-> {args.out}")


def result(args, sets, rows) -> dict[str, Any]:
    return {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "cpus": __import__("os").cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "test": {spec.name: len(docs) for spec, docs in sets},
        "test_source_documents": len({d.meta.get("source_document") for _, ds in sets for d in ds}),
        "rows": rows,
        "table": table(rows),
    }


def _mean(runs: list[dict[str, Any]], key: str) -> float:
    return sum(r[key] for r in runs) / len(runs)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| max_chunk_tokens | strict F1 [95% CI] | lenient F1 [95% CI] | chars/s | windows/s | "
        "passes/token | train seconds | parse issues |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, le, runs = r["entity_strict"], r["entity_lenient"], r["runs"]
        lines.append(
            f"| {r['max_chunk_tokens']} | {s['f1']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] "
            f"| {le['f1']:.3f} [{le['ci95'][0]:.3f}, {le['ci95'][1]:.3f}] "
            f"| {_mean(runs, 'chars_per_second'):.1f} | {_mean(runs, 'windows_per_second'):.3f} "
            f"| {_mean(runs, 'forward_passes_per_token'):.3f} | {_mean(runs, 'train_seconds'):.0f} "
            f"| {sum(sum(x['parse_issues'].values()) for x in runs)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
