"""Every aggregation method on one multi-site federation, clean and with one site's
labels corrupted (a share of its training entity labels reassigned to a wrong type).

The question a user asks: which method should my network use, and does Fed-MedLoRA+
protect the others from a site whose labels disagree with everyone's? Each method runs
through the same Flower simulation with the same sites, seed and budget; the report
gives micro and per-site entity/relation F1 and the aggregation weights per round.
`exact-ranks` is exact aggregation with sites of ranks 16, 8 and 4 (heterogeneous
compute); `fedsa` is scored on each site's personalized adapter (shared A, its own B).

    .venv/bin/python benchmarks/aggregation_methods.py                 # synthetic sites
    .venv/bin/python benchmarks/aggregation_methods.py --real ../shared/data

Defaults are sized for a 2-core CPU (SmolLM2-135M, 3 rounds x 10 steps, evaluation after
the last round only): about 4 minutes per run on the synthetic sites, 9-15 minutes with
--real (3 x 1.5-2.5 minutes of training, 4-5.5 minutes to evaluate 32 windows per site;
the server variant 16-21), 4.5 hours for all 24 runs.
`--methods` and `--settings` pick a subset (`--resume` adds them to the runs OUT already
holds); on a GPU raise --rounds/--local-steps. Writes OUT/results.json (after every run)
and OUT/report.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from fedmedlora.apps.simulation import simulate
from fedmedlora.cli.common import quiet_libraries
from fedmedlora.config import RunConfig, parse_config
from fedmedlora.data.formats.jsonl import write_jsonl
from fedmedlora.data.synthetic import generate_site
from fedmedlora.evaluation.results import HEADLINE, write_json_atomic
from measuring import real_site_sources  # beside this script
from resuming import check_same_arguments, saved_arguments  # beside this script

METHODS = (
    "fedmedlora",
    "fedmedlora+",
    "fedmedlora+server",
    "ffa",
    "exact",
    "exact-ranks",
    "fedsa",
    "fedprox",
    "fedavgm",
    "fedadam",
    "fedyogi",
    "fedex",
)
SYNTHETIC = ("riverside", "northgate", "lakeside")
# exact-ranks: exact aggregation with each site training the rank its compute allows
# (heterogeneous ranks); the global rank stays 16.
SITE_RANKS = (16, 8, 4)


def _data(args: argparse.Namespace, corrupt: float, ranks: bool) -> dict[str, Any]:
    if args.real is None:
        return {
            "synthetic": {
                "sites": list(SYNTHETIC),
                "train_docs": args.train_docs,
                "test_docs": args.test_docs,
                "corrupt_labels": {args.corrupt_site: corrupt} if corrupt else {},
                "lora_ranks": dict(zip(SYNTHETIC, SITE_RANKS, strict=True)) if ranks else {},
            }
        }
    sources = [
        s.model_dump(mode="json", exclude_unset=True)
        for s in real_site_sources(
            args.real.resolve(),
            test_fraction=0.2,
            test_windows=args.eval_windows,
            window_chars=args.window_chars,
        )
    ]
    for s, rank in zip(sources, SITE_RANKS, strict=True):
        if s["name"] == args.corrupt_site:
            s["corrupt_labels"] = corrupt
        if ranks:
            s["lora_rank"] = rank
    return {"sites": sources}


def _server_data(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Clean annotated documents the server holds for Fed-MedLoRA+ (server variant), that
    no site trains on: fresh synthetic notes of every site's style, or with real corpora
    documents of the NCBI-disease development set."""
    if args.real is not None:
        return {
            "name": "server",
            "train": str(args.real.resolve() / "ncbi_disease/NCBIdevelopset_corpus.txt"),
            "format": "pubtator",
            "mapping": "ncbi_disease",
            "max_train_docs": 4 * args.server_docs,
        }
    path = out / "server_validation.jsonl"
    docs = []
    for i, site in enumerate(SYNTHETIC):
        docs += generate_site(site, args.server_docs, seed=args.seed + 1000 + i)
    write_jsonl(docs, path)
    return {"name": "server", "train": str(path), "test_fraction": 0.01}


def config_for(args: argparse.Namespace, method: str, corrupt: float, out: Path) -> RunConfig:
    aggregation: dict[str, Any] = {"method": method.removesuffix("server").removesuffix("-ranks")}
    if method == "fedmedlora+server":
        aggregation |= {"validation": "server", "server_validation": _server_data(args, out)}
    raw = {
        "name": f"{method}-{'corrupt' if corrupt else 'clean'}",
        "seed": args.seed,
        "model": {"name": args.model},
        "lora": {"rank": 16, "alpha": 32, "dropout": 0.0},
        "train": {
            "learning_rate": args.lr,
            "batch_size": args.batch_size,
            "local_steps": args.local_steps,
            "warmup_steps": 3,
        },
        "generation": {"batch_size": 16, "max_new_tokens": 200},
        "data": _data(args, corrupt, ranks=method == "exact-ranks"),
        "federation": {
            "rounds": args.rounds,
            "evaluate_every": 0,
            "evaluate_zero_shot": False,
            "aggregation": aggregation,
        },
        "simulation": {"client_cpus": 0.6, "client_threads": 1},
    }
    return parse_config(raw, f"benchmark config for {method}")


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    final = results.get("final", {})
    weights = {
        r["round"]: {s: m.get("aggregation-weight") for s, m in r["train"].items()}
        for r in results["rounds"]
        if r.get("train")
    }
    return {
        "micro": final.get("micro"),
        "sites": final.get("sites"),
        "weights": weights,
        "seconds": results["run"].get("seconds"),
        "adapter_bytes_per_round": results["communication"].get("adapter_bytes_per_round"),
    }


def report(data: dict[str, Any]) -> str:
    lines = ["# Aggregation methods", ""]
    a = data["args"]
    lines.append(
        f"Model `{a['model']}`, {a['rounds']} rounds x {a['local_steps']} local steps, "
        f"batch {a['batch_size']}, lr {a['lr']}; data: {a['real'] or 'synthetic sites'}; "
        f"corrupted site: {a['corrupt_site']} ({a['corrupt']:.0%} of its training entity "
        "labels reassigned to a wrong type)."
    )
    for setting, runs in data["runs"].items():
        if not runs:
            continue
        sites = sorted({s for r in runs.values() for s in (r.get("sites") or {})})
        lines += [
            "",
            f"## {setting}",
            "",
            "| method | "
            + " | ".join(HEADLINE)
            + " | "
            + " | ".join(f"{s} strict F1" for s in sites)
            + " | last-round weights | s |",
            "|---|" + "---|" * (len(HEADLINE) + len(sites) + 2),
        ]
        for method, r in sorted(runs.items(), key=lambda kv: METHODS.index(kv[0])):
            micro = r.get("micro") or {}
            cells = [f"{micro[k]:.3f}" if k in micro else "-" for k in HEADLINE]
            cells += [
                f"{r['sites'][s]['entity_strict_f1']:.3f}" if s in (r.get("sites") or {}) else "-"
                for s in sites
            ]
            last = r["weights"][max(r["weights"])] if r.get("weights") else {}
            cells.append(", ".join(f"{s} {w:.2f}" for s, w in sorted(last.items())))
            cells.append(f"{r.get('seconds') or 0:.0f}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    corrupt = data["runs"].get("corrupted", {})
    if "fedmedlora" in corrupt and any(m.startswith("fedmedlora+") for m in corrupt):
        base = corrupt["fedmedlora"]["micro"]["entity_strict_f1"]
        lines += ["", "Corrupted run, micro entity strict F1 vs Fed-MedLoRA:", ""]
        for m in ("fedmedlora+", "fedmedlora+server"):
            if m in corrupt:
                f1 = corrupt[m]["micro"]["entity_strict_f1"]
                lines.append(f"- {m}: {f1:.3f} vs {base:.3f} ({f1 - base:+.3f})")
    return "\n".join(lines) + "\n"


# The arguments that only pick which runs to do; every other one must match to resume.
SUBSET_ARGS = ("methods", "settings", "resume")


def resumed(args: dict[str, Any], saved: dict[str, Any], settings: list[str]) -> dict:
    """The runs a stopped benchmark measured, if it ran with the same budget."""
    check_same_arguments(args, saved["args"], args["out"], ignore=SUBSET_ARGS)
    runs = saved["runs"]
    for setting in settings:
        runs.setdefault(setting, {})
    return runs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/aggregation_methods"))
    ap.add_argument("--real", type=Path, default=None, help="../shared/data: real corpora")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--settings", nargs="+", default=["clean", "corrupted"])
    ap.add_argument("--corrupt-site", default=None, help="default: lakeside / chia")
    ap.add_argument("--corrupt", type=float, default=0.4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--train-docs", type=int, default=40)
    ap.add_argument("--test-docs", type=int, default=4)
    ap.add_argument("--server-docs", type=int, default=2)
    ap.add_argument("--eval-windows", type=int, default=32, help="real data: test windows")
    ap.add_argument("--window-chars", type=int, default=240)
    ap.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs OUT/results.json already holds (same budget) and add the rest",
    )
    args = ap.parse_args(argv)
    args.corrupt_site = args.corrupt_site or ("chia" if args.real else "lakeside")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    quiet_libraries()
    args.out.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "benchmark": "aggregation_methods",
        "args": saved_arguments(args),
        "runs": {s: {} for s in args.settings},
    }
    saved = args.out / "results.json"
    if args.resume and saved.is_file():
        data["runs"] = resumed(data["args"], json.loads(saved.read_text()), args.settings)
    began = time.perf_counter()
    for setting in args.settings:
        corrupt = args.corrupt if setting == "corrupted" else 0.0
        for method in args.methods:
            if method in data["runs"][setting]:
                print(f"{setting}: {method} measured before (--resume)", flush=True)
                continue
            out = args.out / setting / method
            config = config_for(args, method, corrupt, out.parent)
            print(f"[{time.perf_counter() - began:6.0f}s] {setting}: {method}", flush=True)
            data["runs"][setting][method] = summarize(simulate(config, out))
            micro = data["runs"][setting][method]["micro"]
            print(
                f"    micro entity strict F1 {micro['entity_strict_f1']:.3f}, "
                f"lenient {micro['entity_lenient_f1']:.3f}",
                flush=True,
            )
            write_json_atomic(data, args.out / "results.json")
            (args.out / "report.md").write_text(report(data), encoding="utf-8")
    print(report(data))
    return data


if __name__ == "__main__":
    main()
