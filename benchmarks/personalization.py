"""Local personalization after federation, per site: does a site gain by tuning the
federated adapter on its own notes, and is LP-FT (first only B, then every adapter
weight) better than tuning everything from the start with the same step budget?

It takes the global adapter of an `aggregation_methods.py` run and rebuilds that run's
sites, budget and seed from its `results.json`, so every site is scored on the same test
windows as in the federation. Per site: the federated adapter, then `lp-ft`
(`--head-steps` on B only, then `--full-steps` on everything) and `ft` (head + full steps
on everything), each from the federated adapter, on the site's own training split.

    .venv/bin/python benchmarks/personalization.py --setting clean --method fedmedlora

With the real corpora each site takes about 2 minutes per evaluation (32 windows) and
1.5 minutes per 20 training steps on a 2-core CPU: 15 minutes for three sites and
`--variants lp-ft`, 27 with `ft` too (measured). Writes OUT/results.json and OUT/report.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from fedmedlora.cli.common import quiet_libraries
from fedmedlora.config import RunConfig
from fedmedlora.evaluation.metrics import Scores
from fedmedlora.evaluation.results import HEADLINE, write_json_atomic
from fedmedlora.federation.methods.hetero_rank import fit_rank
from fedmedlora.recipe.protocols import load_peft_adapter, personalize
from fedmedlora.recipe.site_setup import site_recipe
from resuming import saved_arguments  # beside this script

VARIANTS = ("lp-ft", "ft")


def federation_config(federation: Path, setting: str, method: str) -> RunConfig:
    """The run config the aggregation benchmark used for `method` in `setting`."""
    import aggregation_methods  # beside this script

    saved = federation / "results.json"
    if not saved.is_file():
        raise SystemExit(f"{saved}: no aggregation_methods results (run that benchmark first)")
    args = json.loads(saved.read_text())["args"]
    for key in ("out", "real"):
        args[key] = Path(args[key]) if args[key] else None
    ns = argparse.Namespace(**args)
    corrupt = ns.corrupt if setting == "corrupted" else 0.0
    return aggregation_methods.config_for(ns, method, corrupt, federation / setting)


def steps_for(variant: str, head: int, full: int) -> tuple[int, int]:
    """(steps on B only, steps on everything): the same budget for both variants."""
    return (head, full) if variant == "lp-ft" else (0, head + full)


def run(args: argparse.Namespace) -> dict[str, Any]:
    adapter = args.federation / args.setting / args.method / "adapter"
    if not (adapter / "adapter_model.safetensors").is_file():
        raise SystemExit(
            f"{adapter}: no global adapter ({args.method} in {args.setting} not run, or a "
            "method without one, such as fedsa)"
        )
    config = federation_config(args.federation, args.setting, args.method)
    recipe = config.recipe()
    # a FedEx-LoRA adapter's residual goes on the model every site here shares
    federated = load_peft_adapter(
        adapter, model=site_recipe(recipe, config.data.site_names[0]).lm.model
    )
    data: dict[str, Any] = {
        "benchmark": "personalization",
        "args": saved_arguments(args),
        "sites": {},
    }
    totals = {label: Scores() for label in ("federated", *args.variants)}
    began = time.perf_counter()
    for name in config.data.site_names:
        local = site_recipe(recipe, name)
        start = fit_rank(local, federated)
        print(f"[{time.perf_counter() - began:6.0f}s] {name}: federated adapter", flush=True)
        scores, _ = local.evaluate(start)
        totals["federated"] += scores
        site: dict[str, Any] = {"federated": scores.summary()}
        for variant in args.variants:
            head, full = steps_for(variant, args.head_steps, args.full_steps)
            print(f"[{time.perf_counter() - began:6.0f}s] {name}: {variant}", flush=True)
            _, stats = personalize(local, start, head_steps=head, full_steps=full)
            scores, _ = local.evaluate(None)
            totals[variant] += scores
            site[variant] = {**scores.summary(), "train_loss": [s.mean_loss for s in stats]}
        data["sites"][name] = site
        data["micro"] = {label: s.summary() for label, s in totals.items()}
        data["seconds"] = round(time.perf_counter() - began, 1)
        write_json_atomic(data, args.out / "results.json")
    return data


def report(data: dict[str, Any]) -> str:
    a = data["args"]
    lines = [
        "# Personalization after federation",
        "",
        f"Global adapter: `{a['method']}` ({a['setting']}) from `{a['federation']}`; "
        f"LP-FT {a['head_steps']} steps on B, then {a['full_steps']} on every adapter "
        f"weight; FT {a['head_steps'] + a['full_steps']} steps on every adapter weight.",
        "",
        "| site | adapter | " + " | ".join(HEADLINE) + " |",
        "|---|---|" + "---|" * len(HEADLINE),
    ]
    rows = [*data["sites"].items(), ("micro", data.get("micro", {}))]
    for name, site in rows:
        for label, summary in site.items():
            cells = " | ".join(f"{summary[k]:.3f}" for k in HEADLINE)
            lines.append(f"| {name} | {label} | {cells} |")
    lines += ["", f"{data.get('seconds', 0):.0f} s in all."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--federation",
        type=Path,
        default=Path("benchmarks/results/aggregation_methods"),
        help="an aggregation_methods.py output folder",
    )
    ap.add_argument("--setting", default="clean", choices=("clean", "corrupted"))
    ap.add_argument("--method", default="fedmedlora")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--head-steps", type=int, default=10)
    ap.add_argument("--full-steps", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/personalization"))
    args = ap.parse_args(argv)
    if args.head_steps < 0 or args.full_steps < 0 or args.head_steps + args.full_steps < 1:
        ap.error("--head-steps and --full-steps must be >= 0 and add up to at least 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    quiet_libraries()
    data = run(args)
    text = report(data)
    (args.out / "report.md").write_text(text, encoding="utf-8")
    print(text)
    return data


if __name__ == "__main__":
    main()
