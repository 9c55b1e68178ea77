"""Clinical IE on real public corpora: every protocol x every method.

Sites (federated): MACCROBAT (case reports, brat), Chia (trial criteria, brat), BC5CDR
(train + dev, PubTator), each split into train/test with a fixed seed. External
validation (never trained on): the NCBI-disease test set and the BC5CDR test set. New
site: NCBI-disease with k labelled training documents.

Methods: zero-shot base LLM (instructions + a definition per type), single-site (each
site alone), centralized (all training data pooled: the upper bound), Fed-MedLoRA
(Flower simulation), and the BERT baseline (MiniLM + token-classification head, LoRA)
single-site, centralized and federated through the same Flower path.

    .venv/bin/python benchmarks/clinical_ie.py --data ../shared/data

The default budget is sized for 2 hours on a 2-core CPU: evaluation uses a seeded
sample of --eval-windows sentence windows per test set, training a fixed number of
steps. Measured on such a machine (AMD EPYC without fast bf16, so fp32; nothing else
running), the defaults took 1h45m (6285 s): zero-shot 393 s, Fed-MedLoRA 625 s,
single-site 1372 s, centralized 939 s, new-site 1349 s, the BERT baselines 1601 s; peak
memory 7.6 GiB. A budget of 32 windows and 15 steps per round projected to about 2.5
hours there. On a GPU, scale up, e.g. --rounds 10 --local-steps 100 --batch-size 16
--eval-windows 1000. Writes OUT/results.json (after every phase), OUT/report.md (tables)
and plots; --resume continues a run that stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml

from clinical_ie_report import write_report  # beside this script
from fedmedlora.cli.common import quiet_libraries
from fedmedlora.config import RunConfig, parse_config
from fedmedlora.data.formats.readers import read_any
from fedmedlora.data.mapping import load_mapping, map_documents
from fedmedlora.data.schema import load_schema
from fedmedlora.data.sites import SiteData, load_site, sample_windows
from fedmedlora.evaluation.metrics import Scores
from fedmedlora.evaluation.protocols import (
    EvalSet,
    evaluate_state,
    load_peft_adapter,
    sample_documents,
    train_local,
)
from fedmedlora.evaluation.results import write_json_atomic
from fedmedlora.federation.simulation import simulate
from fedmedlora.training.recipe import initial_adapter
from resuming import check_same_arguments, saved_arguments  # beside this script

SITES = ("maccrobat", "chia", "bc5cdr")
EXTERNAL = ("ncbi_test", "bc5cdr_test")
HEADLINE = ("entity_strict_f1", "entity_lenient_f1", "relation_strict_f1", "relation_lenient_f1")


def site_sources(
    data: Path, args: argparse.Namespace, max_train_docs: int | None = None
) -> list[dict[str, Any]]:
    """The three sites (aggregation_methods.py uses the same definitions)."""
    common = {
        "test_fraction": 0.2,
        "test_windows": args.eval_windows,
        "window_chars": args.window_chars,
        "max_train_docs": max_train_docs,
    }
    return [
        {
            "name": "maccrobat",
            "train": str(data / "maccrobat/MACCROBAT2020"),
            "format": "brat",
            "mapping": "maccrobat",
            **common,
        },
        {
            "name": "chia",
            "train": str(data / "chia/chia_without_scope"),
            "format": "brat",
            "mapping": "chia",
            **common,
        },
        {
            "name": "bc5cdr",
            "train": [
                str(data / "bc5cdr/CDR_TrainingSet.PubTator.txt"),
                str(data / "bc5cdr/CDR_DevelopmentSet.PubTator.txt"),
            ],
            "format": "pubtator",
            "mapping": "bc5cdr",
            **common,
        },
    ]


def run_config(args: argparse.Namespace, data: Path, bert: bool) -> RunConfig:
    raw: dict[str, Any] = {
        "name": "clinical-ie-bert" if bert else "clinical-ie",
        "seed": args.seed,
        "model": {
            "name": args.bert_model if bert else args.model,
            "task": "tagging" if bert else "generative",
        },
        "lora": {"rank": 16, "alpha": 32, "dropout": 0.0},
        "task": {"max_chunk_tokens": 48, "max_length": 384, "tagger_window_tokens": 128},
        "train": (
            {
                "learning_rate": 3e-3,
                "batch_size": 16,
                "local_steps": args.bert_steps,
                "warmup_steps": 5,
            }
            if bert
            else {
                "learning_rate": args.lr,
                "batch_size": args.batch_size,
                "local_steps": args.local_steps,
                "warmup_steps": 3,
            }
        ),
        "generation": {"batch_size": 16, "max_new_tokens": args.max_new_tokens},
        "data": {"sites": site_sources(data, args, args.max_train_docs)},
        # Zero-shot is measured once outside the federation, and every method is scored
        # after training: per-round evaluation would double the budget on a CPU.
        "federation": {"rounds": args.rounds, "evaluate_every": 0, "evaluate_zero_shot": False},
        "simulation": {"client_cpus": 0.6, "client_threads": 1},
    }
    return parse_config(raw, "benchmark config")


def external_set(name: str, path: Path, mapping: str, args, schema) -> EvalSet:
    m = load_mapping(mapping)
    docs, _ = map_documents(read_any(path, "pubtator").documents, m, schema)
    return EvalSet(
        name,
        "external",
        sample_windows(docs, args.eval_windows, args.window_chars, args.seed),
        m.site_spec(name),
    )


class Bench:
    def __init__(self, out: Path, args: argparse.Namespace):
        self.out, self.began = out, time.perf_counter()
        self.data: dict[str, Any] = {
            "benchmark": "clinical_ie",
            "args": saved_arguments(args),
            "sets": {},
            "methods": {},
            "new_site": {},
            "timing_s": {},
        }

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.began:7.0f}s] {msg}", flush=True)

    def phase(self, name: str, began: float) -> None:
        """Add this phase's time (a resumed run adds to what the first one spent)."""
        spent = self.data["timing_s"].get(name, 0.0) + time.perf_counter() - began
        self.data["timing_s"][name] = round(spent, 1)
        self.data["timing_s"]["total"] = round(time.perf_counter() - self.began, 1)
        self.save()

    def record(self, method: str, family: str, scores: dict[str, Scores], **extra) -> None:
        self.data["methods"][method] = {
            "family": family,
            **extra,
            "scores": {s: {**sc.summary(), "detail": sc.as_dict()} for s, sc in scores.items()},
        }
        self.save()

    def save(self) -> None:
        write_json_atomic(self.data, self.out / "results.json")

    def resume(self, saved: dict[str, Any]) -> None:
        """Continue a run that stopped: keep what it measured, under the same arguments."""
        check_same_arguments(self.data["args"], saved["args"], str(self.out))
        for key in ("methods", "new_site", "timing_s", "fedmedlora_rounds", "communication"):
            if key in saved:
                self.data[key] = saved[key]
        self.began -= saved["timing_s"].get("total", 0.0)  # total: both runs' time
        self.log(f"resumed: {sorted(self.data['methods'])} already measured")

    def has(self, method: str) -> bool:
        return method in self.data["methods"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/clinical_ie"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--bert-model", default="minilm-l6")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--local-steps", type=int, default=10, help="LLM steps per site per round")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--bert-steps", type=int, default=20, help="BERT steps per site per round")
    ap.add_argument("--eval-windows", type=int, default=20)
    ap.add_argument("--window-chars", type=int, default=240)
    ap.add_argument("--max-new-tokens", type=int, default=200, help="generation length cap")
    ap.add_argument("--new-site-steps", type=int, default=10)
    ap.add_argument("--k", type=int, nargs="+", default=[0, 5, 10, 25, 50])
    ap.add_argument(
        "--max-train-docs",
        type=int,
        default=None,
        help="keep this many training documents per site (after the seeded split); all by default",
    )
    ap.add_argument("--skip-bert", action="store_true")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="keep the methods already in OUT/results.json (same arguments) and run the rest",
    )
    args = ap.parse_args()
    quiet_libraries()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    bench = Bench(out, args)
    if args.resume and (out / "results.json").is_file():
        bench.resume(json.loads((out / "results.json").read_text()))
    schema = load_schema()
    data = args.data.resolve()

    config = run_config(args, data, bert=False)
    (out / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True)))
    # Sites in the simulation run one thread each (several share the CPU); the phases that
    # run here, one model at a time, use every core.
    recipe = config.recipe().model_copy(update={"threads": None})
    t = time.perf_counter()
    sites: dict[str, SiteData] = {n: load_site(config.data, n, schema, args.seed) for n in SITES}
    ncbi_map = load_mapping("ncbi_disease")
    ncbi_train, _ = map_documents(
        read_any(data / "ncbi_disease/NCBItrainset_corpus.txt", "pubtator").documents,
        ncbi_map,
        schema,
    )
    sets = [EvalSet(n, "in-domain", s.test, s.spec) for n, s in sites.items()]
    sets += [
        external_set(
            "ncbi_test", data / "ncbi_disease/NCBItestset_corpus.txt", "ncbi_disease", args, schema
        ),
        external_set(
            "bc5cdr_test", data / "bc5cdr/CDR_TestSet.PubTator.txt", "bc5cdr", args, schema
        ),
    ]
    ncbi = next(s for s in sets if s.name == "ncbi_test")
    for s in sets:
        bench.data["sets"][s.name] = {
            "setting": s.setting,
            "windows": len(s.docs),
            "entities": sum(len(d.entities) for d in s.docs),
            "relations": sum(len(d.relations) for d in s.docs),
            "entity_types": s.spec.entity_types,
            "relation_types": s.spec.relation_types,
        }
    for n, s in sites.items():
        bench.data["sets"][n].update(train_documents=len(s.train), input_problems=len(s.problems))
    bench.log(f"data: {json.dumps(bench.data['sets'])}")
    bench.phase("data", t)
    steps_per_site = args.rounds * args.local_steps

    # --- LLM -------------------------------------------------------------------------
    t = time.perf_counter()
    base = initial_adapter(recipe)
    if not bench.has("zero-shot"):
        bench.log("zero-shot base LLM")
        scores = evaluate_state(recipe, base, sets, zero_shot_prompt=True, log=bench.log)
        bench.record("zero-shot", "llm", scores)
        bench.phase("zero-shot", t)

    if not bench.has("fedmedlora"):
        t = time.perf_counter()
        bench.log(
            f"Fed-MedLoRA: {args.rounds} rounds x {args.local_steps} steps, Flower simulation"
        )
        final_scores: dict[str, Scores] = {}

        def keep_final(event: str, rnd: int, payload: Any) -> None:
            if event == "evaluated" and rnd == args.rounds:
                final_scores.update(payload)

        fed_results = simulate(config, out / "fedmedlora", listener=keep_final)
        fed_state = load_peft_adapter(out / "fedmedlora" / "adapter")
        bench.data["fedmedlora_rounds"] = [
            {
                "round": r["round"],
                "micro": r.get("micro"),
                "sites": {s: {k: v[k] for k in HEADLINE} for s, v in r.get("sites", {}).items()},
            }
            for r in fed_results["rounds"]
        ]
        bench.data["communication"] = {
            k: v for k, v in fed_results["communication"].items() if k != "per_round"
        }
        # In-domain: the sites' own final evaluation inside Flower (the same seeded test
        # windows); external sets: the saved global adapter, scored here.
        external = [s for s in sets if s.setting == "external"]
        bench.record(
            "fedmedlora",
            "llm",
            {**final_scores, **evaluate_state(recipe, fed_state, external, log=bench.log)},
            steps_per_site=steps_per_site,
        )
        bench.phase("fedmedlora", t)
    fed_state = load_peft_adapter(out / "fedmedlora" / "adapter")

    t = time.perf_counter()
    for name, site in sites.items():
        if bench.has(f"single-site:{name}"):
            continue
        bench.log(f"single-site LLM: {name}, {steps_per_site} steps")
        state, stats = train_local(recipe, [site], steps_per_site, seed=args.seed)
        bench.record(
            f"single-site:{name}",
            "llm",
            evaluate_state(recipe, state, sets, log=bench.log),
            train_seconds=round(stats.seconds, 1),
            final_loss=stats.losses[-1],
        )
    bench.phase("single-site", t)

    t = time.perf_counter()
    if not bench.has("centralized"):
        bench.log(f"centralized LLM: {len(sites) * steps_per_site} steps on pooled data")
        state, stats = train_local(
            recipe, list(sites.values()), len(sites) * steps_per_site, seed=args.seed
        )
        bench.record(
            "centralized",
            "llm",
            evaluate_state(recipe, state, sets, log=bench.log),
            train_seconds=round(stats.seconds, 1),
            final_loss=stats.losses[-1],
        )
        bench.phase("centralized", t)

    t = time.perf_counter()
    for k in args.k:
        if str(k) in bench.data["new_site"]:
            continue
        row: dict[str, Any] = {}
        labelled = sample_documents(ncbi_train, k, args.seed)
        for start_name, start in (("base", base), ("fedmedlora", fed_state)):
            if k == 0:
                state, zero = start, start_name == "base"
            else:
                bench.log(f"new site NCBI, k={k}, from {start_name}: {args.new_site_steps} steps")
                site_k = SiteData(ncbi.spec, labelled, [])
                state, _ = train_local(
                    recipe, [site_k], args.new_site_steps, start=start, seed=args.seed
                )
                zero = False
            scores = evaluate_state(recipe, state, [ncbi], zero_shot_prompt=zero, log=bench.log)
            row[start_name] = scores["ncbi_test"].summary()
        bench.data["new_site"][str(k)] = row
        bench.save()
    bench.phase("new-site", t)

    # --- BERT baseline ---------------------------------------------------------------
    if not args.skip_bert:
        bert_config = run_config(args, data, bert=True)
        bert = bert_config.recipe().model_copy(update={"threads": None})
        bert_steps = args.rounds * args.bert_steps
        t = time.perf_counter()
        for name, site in sites.items():
            if bench.has(f"bert-single-site:{name}"):
                continue
            bench.log(f"BERT single-site: {name}, {bert_steps} steps")
            state, _ = train_local(bert, [site], bert_steps, seed=args.seed)
            bench.record(
                f"bert-single-site:{name}", "bert", evaluate_state(bert, state, sets, log=bench.log)
            )
        if not bench.has("bert-centralized"):
            bench.log(f"BERT centralized: {len(sites) * bert_steps} steps")
            pooled = list(sites.values())
            state, _ = train_local(bert, pooled, len(sites) * bert_steps, seed=args.seed)
            scores = evaluate_state(bert, state, sets, log=bench.log)
            bench.record("bert-centralized", "bert", scores)
        if not bench.has("bert-fed"):
            bench.log("BERT federated through Flower")
            simulate(bert_config, out / "bert-fed")
            fed_bert = load_peft_adapter(out / "bert-fed" / "adapter")
            bench.record("bert-fed", "bert", evaluate_state(bert, fed_bert, sets, log=bench.log))
        bench.phase("bert", t)

    write_report(bench.data, out)
    bench.log(f"done: {out / 'report.md'}")


if __name__ == "__main__":
    main()
