"""Adapters on the wire in float32 vs bfloat16: the same seeded federation twice, scored
per test document, with a paired bootstrap interval of the F1 difference.

The question a user asks before setting `federation.adapter_wire_dtype: bfloat16`: does
halving the bytes cost accuracy? Both runs are the demo's recipe (SmolLM2-135M, three
synthetic hospitals, 3 rounds x 8 local steps, seed 0) through Flower's Simulation Engine;
only the wire dtype differs. The federation itself evaluates on one test note per site
(its own final evaluation; cheap); each run's final adapter is then scored in this
process on `--test-docs` held-out notes per site, document by document, so the two runs
can be compared on the same documents: the interval resamples documents (all sites
pooled) and recomputes micro entity F1 of both runs on each resample.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/wire_dtype.py --resume

Writes OUT/<dtype>/ (each run's results.json and adapter) and docs/measured/wire_dtype.json
(after every step, so `--resume` picks up where a killed run stopped).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path
from typing import Any

import torch

from fedmedlora.apps.simulation import simulate
from fedmedlora.cli.common import quiet_libraries
from fedmedlora.config import load_config
from fedmedlora.data.sites import synthetic_site
from fedmedlora.evaluation.metrics import score_corpus
from fedmedlora.evaluation.results import write_json_atomic
from fedmedlora.model.lora import load_adapter_state
from fedmedlora.recipe.protocols import load_peft_adapter
from fedmedlora.recipe.site_recipe import loaded_model, predict

ROOT = Path(__file__).resolve().parents[1]
DTYPES = ("float32", "bfloat16")
KEYS = ("entity_strict", "entity_lenient", "relation_strict", "relation_lenient")


def config_for(dtype: str, args: argparse.Namespace):
    return load_config(
        None,
        {
            "name": f"wire-{dtype}",
            "seed": args.seed,
            "federation.adapter_wire_dtype": dtype,
            "federation.evaluate_zero_shot": False,
            "data.synthetic.test_docs": 1,
        },
    )


def federate(dtype: str, args: argparse.Namespace, saved: dict[str, Any]) -> dict[str, Any]:
    out = args.work / dtype
    if args.resume and (out / "adapter" / "adapter_model.safetensors").exists():
        results = json.loads((out / "results.json").read_text())
    else:
        began = time.perf_counter()
        results = simulate(config_for(dtype, args), out)
        print(f"{dtype}: federated in {time.perf_counter() - began:.0f} s", flush=True)
    comm = results["communication"]
    return {
        "seconds": results["run"].get("seconds"),
        "adapter_bytes": comm.get("adapter_bytes"),
        "adapter_bytes_per_round": comm.get("adapter_bytes_per_round"),
        "bytes_per_round": [
            {k: r[k] for k in ("round", "train_down_bytes", "train_up_bytes", "total_bytes")}
            for r in comm.get("per_round", [])
        ],
        "federation_eval_micro_1_note_per_site": results.get("final", {}).get("micro"),
    } | saved.get("runs", {}).get(dtype, {})


def counts(scores) -> dict[str, list[int]]:
    out = {}
    for key in KEYS:
        kind, mode = key.split("_")
        c = scores.micro(kind, mode)
        out[key] = [c.tp, c.fp, c.fn]
    return out


def score_documents(dtype: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each test note of every site, scored with this run's final adapter."""
    config = config_for(dtype, args)
    recipe = config.recipe()
    lm = loaded_model(recipe)
    load_adapter_state(lm.model, load_peft_adapter(args.work / dtype / "adapter"))
    syn = config.data.synthetic
    rows = []
    for name in syn.sites:
        site = synthetic_site(name, syn.train_docs, args.test_docs, args.seed)
        began = time.perf_counter()
        preds, stats = predict(recipe, site.test, site.spec)
        by_id = {p.id: p for p in preds}
        for doc in site.test:
            scores, _ = score_corpus(
                [doc], [by_id[doc.id]], site.spec.entity_types, site.spec.relation_types
            )
            rows.append({"site": name, "doc": doc.id, **counts(scores)})
        print(
            f"{dtype}: {name} {len(site.test)} notes, {stats.chunks} windows,"
            f" {time.perf_counter() - began:.0f} s",
            flush=True,
        )
    return rows


def f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def micro(rows: list[dict[str, Any]], key: str) -> float:
    tp = fp = fn = 0
    for r in rows:
        tp, fp, fn = tp + r[key][0], fp + r[key][1], fn + r[key][2]
    return f1(tp, fp, fn)


def paired_bootstrap(
    a: list[dict[str, Any]], b: list[dict[str, Any]], key: str, n: int, seed: int
) -> dict[str, Any]:
    """F1(b) - F1(a) and its 95% interval, resampling documents (the same for both)."""
    assert [r["doc"] for r in a] == [r["doc"] for r in b]
    rng = random.Random(seed)
    idx = range(len(a))
    diffs = []
    for _ in range(n):
        pick = rng.choices(idx, k=len(a))
        diffs.append(micro([b[i] for i in pick], key) - micro([a[i] for i in pick], key))
    diffs.sort()
    return {
        "float32": round(micro(a, key), 4),
        "bfloat16": round(micro(b, key), 4),
        "difference": round(micro(b, key) - micro(a, key), 4),
        "ci95": [round(diffs[int(0.025 * n)], 4), round(diffs[int(0.975 * n) - 1], 4)],
        "share_bf16_better": round(sum(d > 0 for d in diffs) / n, 3),
    }


def adapter_gap(args: argparse.Namespace) -> dict[str, float]:
    """How far apart the two runs' final adapters ended (the bf16 rounding's trace)."""
    a, b = (load_peft_adapter(args.work / d / "adapter") for d in DTYPES)
    num = sum(float((a[k] - b[k]).float().norm() ** 2) for k in a) ** 0.5
    den = sum(float(a[k].float().norm() ** 2) for k in a) ** 0.5
    return {"relative_l2": round(num / den, 5)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-docs", type=int, default=12, help="held-out notes per site")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "wire_dtype")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "measured" / "wire_dtype.json")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    quiet_libraries()
    torch.set_num_threads(1)
    saved = json.loads(args.out.read_text()) if args.resume and args.out.exists() else {}
    result: dict[str, Any] = {
        "benchmark": "wire_dtype",
        "machine": {"cpu": platform.processor() or platform.machine()},
        "settings": {
            "recipe": "demo (src/fedmedlora/configs/demo.yaml)",
            "seed": args.seed,
            "test_docs_per_site": args.test_docs,
            "bootstrap": args.bootstrap,
        },
        "runs": {},
    }
    for dtype in DTYPES:
        result["runs"][dtype] = federate(dtype, args, saved)
        write_json_atomic(result, args.out)
    for dtype in DTYPES:
        run = result["runs"][dtype]
        if len(run.get("documents", [])) != 3 * args.test_docs:
            run["documents"] = score_documents(dtype, args)
        write_json_atomic(result, args.out)
    a, b = (result["runs"][d]["documents"] for d in DTYPES)
    result["difference_bf16_minus_fp32"] = {
        k: paired_bootstrap(a, b, k, args.bootstrap, args.seed) for k in KEYS
    }
    result["adapter_gap"] = adapter_gap(args)
    result["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json_atomic(result, args.out)
    for k, d in result["difference_bf16_minus_fp32"].items():
        print(
            f"{k:17s} fp32 {d['float32']:.3f}  bf16 {d['bfloat16']:.3f}"
            f"  diff {d['difference']:+.3f}  95% [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
        )
    for d in DTYPES:
        print(f"{d}: {result['runs'][d]['adapter_bytes_per_round'] / 2**20:.1f} MiB per round")
    return result


if __name__ == "__main__":
    main()
