"""Peak memory of one simulation process serving 2, 5 and 10 sites with the same config.

A Flower simulation runs each site's ClientApp in a Ray actor; an actor serves any number
of sites one message at a time, and every site it serves shares one frozen base model
(`recipe/site_recipe.py`'s per-process cache): only the adapter weights are swapped in. So
memory should grow by a site's data and adapter, not by a model per site.
Goal: 10 sites <= 1.5x the peak of 2 sites.

Each count runs in a fresh process: imports, baseline RSS, then every site trains
`--steps` LoRA steps per round for `--rounds` rounds from the shared global adapter
(and the sites' adapters are averaged, as the server would), then each site's
validation loss is computed. Peak = the process's peak RSS - its baseline.

    .venv/bin/python benchmarks/site_memory.py [--model smollm2-135m] [--sites 2 5 10]

Prints the figures and writes docs/measured/site_memory.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measuring import proc_status, write_result  # beside this script

ROOT = Path(__file__).resolve().parents[1]


def measure(model: str, n_sites: int, rounds: int, steps: int, docs: int) -> dict:
    import torch

    from fedmedlora.data.formats.jsonl import write_jsonl
    from fedmedlora.data.synthetic import SYNTHETIC_SITES, generate_site
    from fedmedlora.recipe import site_recipe as recipes
    from fedmedlora.recipe.settings import Recipe
    from fedmedlora.recipe.site_setup import site_recipe

    torch.set_num_threads(1)
    baseline = proc_status("VmRSS")
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        sites = []
        for i in range(n_sites):
            path = Path(tmp) / f"site{i}.jsonl"
            write_jsonl(generate_site(SYNTHETIC_SITES[i % 3], docs, seed=i), path)
            sites.append({"name": f"site{i}", "train": str(path), "test_fraction": 0.25})
        recipe = Recipe.model_validate(
            {
                "model": {"name": model, "precision": "fp32"},
                "lora": {"dropout": 0.0},
                "train": {"batch_size": 2, "local_steps": steps, "validation_fraction": 0.25},
                "data": {"sites": sites},
            }
        )
        served = [site_recipe(recipe, s["name"]) for s in sites]
        state = recipes.initial_adapter(recipe)
        for rnd in range(1, rounds + 1):
            updates = [site.train(state, rnd, rounds * steps)[0] for site in served]
            state = {k: sum(u[k] for u in updates) / len(updates) for k in state}
        losses = [site.validation_loss(state) for site in served]
        models = len(recipes._MODELS)
    return {
        "sites": n_sites,
        "base_models_loaded": models,
        "peak_rss": proc_status("VmHWM"),
        "baseline_rss": baseline,
        "peak_over_baseline": proc_status("VmHWM") - baseline,
        "seconds": time.perf_counter() - began,
        "validation_loss": sum(losses) / len(losses),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sites", type=int, nargs="+", default=[2, 5, 10])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--docs", type=int, default=8, help="documents per site")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "docs" / "measured" / "site_memory.json"))
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.model, args.one, args.rounds, args.steps, args.docs)))
        return {}
    runs = []
    for n in args.sites:
        cmd = [
            sys.executable, __file__, "--one", str(n), "--model", args.model,
            "--rounds", str(args.rounds), "--steps", str(args.steps), "--docs", str(args.docs),
        ]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        run = json.loads(out.strip().splitlines()[-1])
        runs.append(run)
        print(
            f"{n:3d} sites: peak {run['peak_over_baseline'] / 2**20:7.0f} MiB over baseline, "
            f"{run['base_models_loaded']} base model(s), {run['seconds']:.0f}s",
            flush=True,
        )
    two = next((r for r in runs if r["sites"] == 2), runs[0])
    ratios = {r["sites"]: r["peak_over_baseline"] / two["peak_over_baseline"] for r in runs}
    result = {
        "benchmark": "site_memory",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {
            "model": args.model,
            "rounds": args.rounds,
            "steps": args.steps,
            "docs_per_site": args.docs,
        },
        "runs": runs,
        "peak_ratio_to_2_sites": ratios,
        "goal": "10 sites <= 1.5x the peak of 2 sites",
        "goal_met": all(v <= 1.5 for v in ratios.values()),
    }
    for n, r in ratios.items():
        print(f"{n} sites / 2 sites: {r:.2f}x")
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
