"""Clinical IE on real public corpora: every protocol x every method, over several
training seeds, with bootstrap intervals over test documents.

Sites (federated): MACCROBAT (case reports, brat), Chia (trial criteria, brat), BC5CDR
(train + dev, PubTator), each split into train/test once (`--seed`, fixed for every
training seed). External validation (never trained on): the NCBI-disease test set and
the BC5CDR test set. New site: NCBI-disease with k labelled training documents,
trained from the base model and from the seed's Fed-MedLoRA adapter for
`--new-site-epochs` passes over their windows (at least `--new-site-steps` steps).

Methods: zero-shot base LLM, single-site (each site alone), centralized (all training
data pooled), Fed-MedLoRA (Flower simulation) and its variants (`--sweep`, `--corrupt`),
and the BERT baseline (MiniLM + token-classification head, LoRA) single-site,
centralized and federated through the same Flower path.

    .venv/bin/python benchmarks/clinical_ie.py --data ../shared/data

Evaluation: `--eval-windows N` scores a seeded sample of N sentence windows per test set
(default 300, the same windows for every method and seed); `--eval-windows 0` scores
whole test splits. Every model is scored here, per window, so every cell has a 95%
interval resampling test documents (windows of one document move together) and every
comparison is paired (clinical_ie_report.py). Each finished cell (method x seed) is
written to OUT/results.json at once; `--resume` skips the cells already there (same
arguments), so a stopped run loses at most the cell it was in. Wall time: docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clinical_ie_report import (  # beside this script
    EXTERNAL,
    SITES,
    central_cell,
    central_lr_cell,
    lr_of,
    single_cell,
    write_report,
)
from fedmedlora.apps.simulation import simulate
from fedmedlora.cli.common import quiet_libraries
from fedmedlora.config import RunConfig, parse_config
from fedmedlora.data.document import Document
from fedmedlora.data.formats.jsonl import load_jsonl, write_jsonl
from fedmedlora.data.formats.readers import read_any
from fedmedlora.data.mapping import load_mapping, map_documents
from fedmedlora.data.schema import Schema, load_schema
from fedmedlora.data.site import SiteSpec
from fedmedlora.data.sites import SiteData, load_site, sample_windows
from fedmedlora.evaluation.bootstrap import micro_counts
from fedmedlora.evaluation.metrics import Scores, score_document
from fedmedlora.evaluation.results import write_json_atomic
from fedmedlora.model.lora import load_adapter_state
from fedmedlora.recipe.protocols import (
    EvalSet,
    load_peft_adapter,
    sample_documents,
    train_local,
)
from fedmedlora.recipe.settings import Recipe
from fedmedlora.recipe.site_recipe import initial_adapter, loaded_model, predict
from resuming import check_same_arguments, saved_arguments  # beside this script

# Arguments that choose which cells run, not what a cell computes: a resumed run may
# change them (e.g. add seeds, or the BERT cells, to a finished run).
# A federated variant's settings are checked per cell instead (`pending`).
SELECTION = (
    "resume",
    "seeds",
    "skip_bert",
    "only",
    "sweep",
    "k",
    "sweep_schedules",
    "sweep_lr",
    "sweep_warmup",
    "server_momentum",
    "size_mix",
    "corrupt_site",
    "corrupt_fraction",
    "new_site_epochs",  # checked per new-site cell instead (`pending`)
)


# --- data -------------------------------------------------------------------------------
def corpus_sources(data: Path) -> list[dict[str, Any]]:
    """The three sites' original files (aggregation_methods.py uses the same corpora)."""
    return [
        {
            "name": "maccrobat",
            "train": str(data / "maccrobat/MACCROBAT2020"),
            "format": "brat",
            "mapping": "maccrobat",
        },
        {
            "name": "chia",
            "train": str(data / "chia/chia_without_scope"),
            "format": "brat",
            "mapping": "chia",
        },
        {
            "name": "bc5cdr",
            "train": [
                str(data / "bc5cdr/CDR_TrainingSet.PubTator.txt"),
                str(data / "bc5cdr/CDR_DevelopmentSet.PubTator.txt"),
            ],
            "format": "pubtator",
            "mapping": "bc5cdr",
        },
    ]


def test_sample(docs: list[Document], args: argparse.Namespace) -> list[Document]:
    """What a test set is scored on: whole documents, or a seeded window sample."""
    if args.eval_windows == 0:
        return docs
    return sample_windows(docs, args.eval_windows, args.window_chars, args.seed)


def prepare_splits(args: argparse.Namespace, out: Path, schema: Schema) -> Path:
    """Write each site's train/test split and each external test sample as JSONL, once:
    the same documents for every training seed (the run config's seed also seeds a
    site's split, so the federation reads these fixed files instead)."""
    folder = out / "splits"
    if (folder / "done").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    data = args.data.resolve()
    raw = {"sites": [{**s, "test_fraction": 0.2} for s in corpus_sources(data)]}
    settings = parse_config({"data": raw}, "benchmark data").data
    for name in SITES:
        site = load_site(settings, name, schema, args.seed)
        train = site.train[: args.max_train_docs] if args.max_train_docs else site.train
        write_jsonl(train, folder / f"{name}.train.jsonl", schema)
        write_jsonl(test_sample(site.test, args), folder / f"{name}.test.jsonl", schema)
        (folder / f"{name}.types.json").write_text(json.dumps(site.spec.model_dump()))
    for name, file, mapping in (
        ("ncbi_test", "ncbi_disease/NCBItestset_corpus.txt", "ncbi_disease"),
        ("bc5cdr_test", "bc5cdr/CDR_TestSet.PubTator.txt", "bc5cdr"),
        ("ncbi_train", "ncbi_disease/NCBItrainset_corpus.txt", "ncbi_disease"),
    ):
        m = load_mapping(mapping)
        docs, _ = map_documents(read_any(data / file, "pubtator").documents, m, schema)
        docs = docs if name == "ncbi_train" else test_sample(docs, args)
        write_jsonl(docs, folder / f"{name}.jsonl", schema)
        (folder / f"{name}.types.json").write_text(json.dumps(m.site_spec(name).model_dump()))
    (folder / "done").write_text("")
    return folder


def site_config(folder: Path, name: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = SiteSpec(**json.loads((folder / f"{name}.types.json").read_text()))
    return {
        "name": name,
        "train": str(folder / f"{name}.train.jsonl"),
        # The sites' own final evaluation inside Flower is skipped in effect (one window):
        # every model is scored here, per document, on the full test sample.
        "test": str(folder / f"{name}.test.jsonl"),
        "max_test_docs": 1,
        "format": "jsonl",
        "entity_types": spec.entity_types,
        "relation_types": spec.relation_types,
        "corrupt_labels": args.corrupt_fraction if name == args.corrupt_site else 0.0,
    }


# --- configs ------------------------------------------------------------------------------
def variants(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Federated variants, each as overrides of the default Fed-MedLoRA run. A sweep
    schedule of the default's steps per site (rounds x steps) is equal total compute; one
    of the centralized run's steps (sites x the default) gives every site as many
    sequential steps as pooling has."""
    out: dict[str, dict[str, Any]] = {"fedmedlora": {}}
    if args.mask_unannotated:
        out["fedmedlora"] = {"train.mask_unannotated_types": True}
    if args.sweep:
        for sched in args.sweep_schedules:
            r, s = schedule(sched)
            if (r, s) != (args.rounds, args.local_steps):
                out[f"fed:{sched}"] = {"federation.rounds": r, "train.local_steps": s}
        for lr in args.sweep_lr:
            out[f"fed:lr{lr:g}"] = {"train.learning_rate": lr}
        for w in args.sweep_warmup:
            out[f"fed:warmup{w}"] = {"train.warmup_steps": w}
        out["fed:fedavgm"] = {
            "federation.aggregation.method": "fedavgm",
            "federation.aggregation.server_momentum": args.server_momentum,
        }
        # the product of averaged factors is not the average of the sites' products:
        # the best rank-r factors of that average instead (hetero_rank.py)
        out["fed:exact"] = {"federation.aggregation.method": "exact"}
        out["fed:plus-mix"] = plus_overrides(args)
        out["fed:mask" if not args.mask_unannotated else "fed:nomask"] = {
            "train.mask_unannotated_types": not args.mask_unannotated
        }
    if args.corrupt_site:
        out["fed:corrupt"] = {"corrupt": True}
        out["fed+:corrupt"] = {"corrupt": True, **plus_overrides(args)}
    return out


def central_variants(args: argparse.Namespace) -> list[str]:
    """Centralized runs of a sweep schedule's total compute (sites x its steps per site),
    for schedules with more steps per site than the default: `centralized` has the
    default's total, so a federated schedule that gives every site more steps is
    compared with pooling at the same total compute, not only at the same depth. And
    centralized at each swept learning rate: whether a rate that helps federated closes
    the gap or helps pooling as much."""
    by_steps = [central_cell(1, n) for n in longer_steps_per_site(args)]
    return by_steps + [central_lr_cell(lr) for lr in args.sweep_lr]


def longer_steps_per_site(args: argparse.Namespace) -> list[int]:
    """The steps per site of the sweep schedules that give a site more than the default."""
    default = args.rounds * args.local_steps
    steps = {r * s for r, s in map(schedule, args.sweep_schedules)}
    return sorted(n for n in steps if n > default)


def single_variants(args: argparse.Namespace) -> list[str]:
    """Each site alone, trained as many steps as each site of a sweep schedule with more
    steps per site than the default: the fair single-site side of that schedule's
    external comparison (the default single sites train the default's steps)."""
    return [
        single_cell(f"single-site:{site}", n) for n in longer_steps_per_site(args) for site in SITES
    ]


def schedule(text: str) -> tuple[int, int]:
    """(rounds, local steps) of a sweep schedule written ROUNDSxSTEPS."""
    r, _, st = text.partition("x")
    if not (r.isdigit() and st.isdigit() and int(r) > 0 and int(st) > 0):
        raise SystemExit(f"--sweep-schedules {text!r}: expected ROUNDSxSTEPS, e.g. 8x5")
    return int(r), int(st)


def plus_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "federation.aggregation.method": "fedmedlora+",
        "federation.aggregation.size_mix": args.size_mix,
        "train.validation_fraction": 0.1,
    }


def run_config(
    args: argparse.Namespace,
    folder: Path,
    seed: int,
    bert: bool = False,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    overrides = dict(overrides or {})
    corrupt = overrides.pop("corrupt", False)
    sites = [site_config(folder, n, args) for n in SITES]
    if not corrupt:
        for s in sites:
            s["corrupt_labels"] = 0.0
    raw: dict[str, Any] = {
        "name": "clinical-ie-bert" if bert else "clinical-ie",
        "seed": seed,
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
                "warmup_steps": args.warmup,
            }
        ),
        "generation": {"batch_size": 16, "max_new_tokens": args.max_new_tokens},
        "data": {"sites": sites},
        "federation": {"rounds": args.rounds, "evaluate_every": 0, "evaluate_zero_shot": False},
        "simulation": {"client_cpus": 0.6, "client_threads": 1},
    }
    if not bert and args.mask_unannotated:
        raw["train"]["mask_unannotated_types"] = True
    for dotted, value in overrides.items():
        node = raw
        *path, leaf = dotted.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return parse_config(raw, "benchmark config")


def local_recipe(config: RunConfig) -> Recipe:
    # Sites in the simulation run one thread each (several share the CPU); the phases that
    # run here, one model at a time, use every core.
    return config.recipe().model_copy(update={"threads": None})


# --- cells --------------------------------------------------------------------------------
def cell_id(method: str, seed: int | None) -> str:
    """A cell: one method (one trained model) and one training seed ("zero-shot": none)."""
    return method if seed is None else f"{method}@{seed}"


def parse_cell(cell: str) -> tuple[str, int | None]:
    method, _, seed = cell.partition("@")
    return method, int(seed) if seed else None


def planned_cells(args: argparse.Namespace) -> list[str]:
    """Every cell of this run, in the order they run (new-site cells need the federated
    adapter of their seed; the BERT cells come last)."""
    only = set(args.only or [])

    def wanted(method: str) -> bool:
        family = method.split(":")[0]
        return not only or method in only or family in only

    cells = ["zero-shot"] if wanted("zero-shot") else []
    for seed in range(args.seeds):
        methods = list(variants(args))
        methods += [f"single-site:{s}" for s in SITES] + ["centralized"]
        methods += central_variants(args) + single_variants(args) if args.sweep else []
        methods += [f"new-site:k{k}:{start}" for k in args.k if k for start in ("base", "fed")]
        if not args.skip_bert:
            methods += [f"bert-single-site:{s}" for s in SITES]
            methods += ["bert-centralized", "bert-fed"]
        cells += [cell_id(m, seed) for m in methods if wanted(m)]
    return cells


def pending(
    planned: list[str],
    done: dict[str, Any],
    fed: dict[str, dict[str, Any]] | None = None,
    new_site_epochs: float | None = None,
) -> list[str]:
    """The planned cells not yet measured; a federated variant measured with other
    settings than `fed` (its overrides now), or a new-site cell trained for other
    epochs than `new_site_epochs` (none recorded: the fixed-step protocol, 0), is
    measured again."""
    fed = fed or {}

    def finished(cell: str) -> bool:
        method = parse_cell(cell)[0]
        if cell not in done:
            return False
        if method.startswith("new-site:") and new_site_epochs is not None:
            return done[cell].get("epochs", 0.0) == new_site_epochs
        return method not in fed or done[cell].get("overrides", {}) == fed[method]

    return [c for c in planned if not finished(c)]


def document_scores(
    recipe: Recipe, state: dict, sets: list[EvalSet], zero_shot: bool, log: Callable
) -> dict[str, Any]:
    """Per-window micro counts of one adapter on every set (what the bootstrap needs)."""
    load_adapter_state(loaded_model(recipe).model, state)
    out: dict[str, Any] = {}
    for s in sets:
        began = time.perf_counter()
        preds, stats = predict(recipe, s.docs, s.spec, zero_shot_prompt=zero_shot)
        by_id = {p.id: p for p in preds}
        total, rows = Scores(), []
        for doc in s.docs:
            scores = score_document(doc, by_id[doc.id], s.spec.entity_types, s.spec.relation_types)
            total += scores
            rows.append(micro_counts(scores))
        summary = total.summary()
        out[s.name] = {"summary": summary, "counts": rows, "windows": stats.chunks}
        log(
            f"    {s.name:<12} entity strict {summary['entity_strict_f1']:.3f} lenient "
            f"{summary['entity_lenient_f1']:.3f} ({stats.chunks} windows, "
            f"{time.perf_counter() - began:.0f}s)"
        )
    return out


def code_version() -> str | None:
    """The commit each cell was measured with (a long run spans days and sessions)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


class Bench:
    """results.json: the arguments, the sets, and one entry per finished cell."""

    def __init__(self, out: Path, args: argparse.Namespace):
        self.out, self.began = out, time.perf_counter()
        self.data: dict[str, Any] = {
            "benchmark": "clinical_ie",
            "args": saved_arguments(args),
            "sets": {},
            "cells": {},
            "timing_s": {},
        }
        self.commit = code_version()

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.began:7.0f}s] {msg}", flush=True)

    def save(self) -> None:
        self.data["timing_s"]["total"] = round(time.perf_counter() - self.began, 1)
        write_json_atomic(self.data, self.out / "results.json")

    def resume(self, saved: dict[str, Any]) -> None:
        """Keep the cells of a run that stopped, if it ran with the same arguments."""
        check_same_arguments(self.data["args"], saved["args"], str(self.out), ignore=SELECTION)
        self.data["cells"] = saved.get("cells", {})
        self.data["timing_s"] = saved.get("timing_s", {})
        self.began -= self.data["timing_s"].get("total", 0.0)  # total: every run's time
        self.data["sets"] = saved.get("sets", {})
        self.log(f"resumed: {len(self.data['cells'])} cells already measured")

    def use_sets(self, described: dict[str, Any]) -> None:
        """The test sets of this run; a resumed run's cells must have been scored on the
        same windows (a run continued on another machine or day rebuilds its splits, and
        a changed reader or corpus file would silently mix two test sets in one table)."""
        saved = self.data["sets"]
        if self.data["cells"] and saved and saved != described:
            changed = sorted(
                k for k in saved.keys() | described.keys() if saved.get(k) != described.get(k)
            )
            raise SystemExit(
                f"--resume: the test sets differ from those of the saved cells: {changed} "
                f"({self.out / 'splits'} was rebuilt from other data)"
            )
        self.data["sets"] = described

    def record(self, cell: str, sets: dict[str, Any], began: float, **extra: Any) -> None:
        seconds = round(time.perf_counter() - began, 1)
        self.data["cells"][cell] = {
            "seconds": seconds,
            "commit": self.commit,
            **extra,
            "sets": sets,
        }
        self.save()
        self.log(f"cell {cell} done in {seconds:.0f}s")


def load_sets(folder: Path, with_sites: bool = True) -> tuple[list[EvalSet], list[Document]]:
    def spec(name: str) -> SiteSpec:
        return SiteSpec(**json.loads((folder / f"{name}.types.json").read_text()))

    sets = [EvalSet(n, "in-domain", load_jsonl(folder / f"{n}.test.jsonl"), spec(n)) for n in SITES]
    sets += [EvalSet(n, "external", load_jsonl(folder / f"{n}.jsonl"), spec(n)) for n in EXTERNAL]
    return sets, load_jsonl(folder / "ncbi_train.jsonl")


def describe_sets(sets: list[EvalSet], folder: Path) -> dict[str, Any]:
    out = {}
    for s in sets:
        out[s.name] = {
            "setting": s.setting,
            "windows": len(s.docs),
            "documents": len({d.meta.get("source_document", d.id) for d in s.docs}),
            # The bootstrap's resampling unit for each scored window, in order.
            "groups": [d.meta.get("source_document", d.id) for d in s.docs],
            "entities": sum(len(d.entities) for d in s.docs),
            "relations": sum(len(d.relations) for d in s.docs),
            "entity_types": s.spec.entity_types,
            "relation_types": s.spec.relation_types,
        }
        train = folder / f"{s.name}.train.jsonl"
        if train.is_file():
            out[s.name]["train_documents"] = sum(1 for _ in train.open())
    return out


def run_cell(
    cell: str,
    bench: Bench,
    args: argparse.Namespace,
    folder: Path,
    sets: list[EvalSet],
    ncbi_train: list[Document],
) -> None:
    """Train (or load) one cell's model and score it on every set."""
    method, seed = parse_cell(cell)
    seed = seed or 0
    began = time.perf_counter()
    log = bench.log
    in_domain = [s for s in sets if s.setting == "in-domain"]
    bert = method.startswith("bert")
    config = run_config(args, folder, seed, bert=bert)
    recipe = local_recipe(config)
    steps = args.rounds * (args.bert_steps if bert else args.local_steps)
    sites = {
        s.name: SiteData(s.spec, load_jsonl(folder / f"{s.name}.train.jsonl"), [])
        for s in in_domain
    }
    fed_variants = variants(args)
    if method == "zero-shot":
        log("zero-shot base LLM")
        scores = document_scores(recipe, initial_adapter(recipe), sets, True, log)
        bench.record(cell, scores, began)
    elif method in fed_variants or method == "bert-fed":
        overrides = fed_variants.get(method, {})
        fed_config = run_config(args, folder, seed, bert=bert, overrides=overrides)
        log(f"{method} (seed {seed}): Flower simulation, {overrides or 'default settings'}")
        run_dir = bench.out / f"seed{seed}" / method.replace(":", "_").replace("+", "plus")
        if run_dir.exists():  # a cell that stopped part-way starts over
            shutil.rmtree(run_dir)
        results = simulate(fed_config, run_dir)
        state = load_peft_adapter(run_dir / "adapter")
        scores = document_scores(local_recipe(fed_config), state, sets, False, log)
        comm = {k: v for k, v in results["communication"].items() if k != "per_round"}
        rounds = [r.get("train") for r in results["rounds"] if r.get("train")]
        bench.record(cell, scores, began, overrides=overrides, communication=comm, train=rounds)
    elif method.startswith(("single-site:", "bert-single-site:")):
        _, name, *longer = method.split(":")  # single-site:SITE:STEPS trains STEPS steps
        steps = int(longer[0]) if longer else steps
        log(f"{method} (seed {seed}): {steps} steps")
        state, stats = train_local(recipe, [sites[name]], steps, seed=seed)
        scores = document_scores(recipe, state, sets, False, log)
        bench.record(cell, scores, began, final_loss=stats.losses[-1])
    elif method in ("centralized", "bert-centralized") or method.startswith("centralized:"):
        lr = lr_of(method)  # centralized:lrX; centralized:N is N steps
        if lr is not None:
            recipe = local_recipe(
                run_config(args, folder, seed, overrides={"train.learning_rate": lr})
            )
        total = int(method.split(":")[1]) if ":" in method and lr is None else len(sites) * steps
        log(f"{method} (seed {seed}): {total} steps, lr {recipe.train.learning_rate:g}, pooled")
        state, stats = train_local(recipe, list(sites.values()), total, seed=seed)
        scores = document_scores(recipe, state, sets, False, log)
        bench.record(cell, scores, began, final_loss=stats.losses[-1])
    elif method.startswith("new-site:"):
        _, k_text, start = method.split(":")
        k = int(k_text.removeprefix("k"))
        ncbi = next(s for s in sets if s.name == "ncbi_test")
        labelled = sample_documents(ncbi_train, k, seed)
        if start == "fed":
            fed_dir = bench.out / f"seed{seed}" / "fedmedlora" / "adapter"
            if not fed_dir.is_dir():
                raise SystemExit(f"{cell}: needs the Fed-MedLoRA adapter of seed {seed}")
            origin = load_peft_adapter(fed_dir)
        else:
            origin = initial_adapter(recipe)
        log(
            f"{method} (seed {seed}): {k} documents, {args.new_site_epochs:g} epochs "
            f"(at least {args.new_site_steps} steps), lr {args.lr}"
        )
        state, stats = train_local(
            recipe,
            [SiteData(ncbi.spec, labelled, [])],
            args.new_site_steps,
            start=origin,
            seed=seed,
            epochs=args.new_site_epochs,
        )
        log(f"    trained {stats.steps} steps")
        scores = document_scores(recipe, state, [ncbi], False, log)
        bench.record(
            cell, scores, began, k=k, steps=stats.steps, epochs=args.new_site_epochs, lr=args.lr
        )
    else:
        raise SystemExit(f"unknown cell {cell!r}")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/clinical_ie"))
    ap.add_argument("--seed", type=int, default=0, help="the data split and window sample")
    ap.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 per method")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--bert-model", default="minilm-l6")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--local-steps", type=int, default=10, help="LLM steps per site per round")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=3, help="warmup steps (of all rounds)")
    ap.add_argument("--bert-steps", type=int, default=20, help="BERT steps per site per round")
    ap.add_argument(
        "--eval-windows",
        type=int,
        default=300,
        help="seeded windows per test set; 0: whole test splits",
    )
    ap.add_argument("--window-chars", type=int, default=240)
    ap.add_argument("--max-new-tokens", type=int, default=200, help="generation length cap")
    ap.add_argument("--new-site-steps", type=int, default=10, help="new site: fewest steps")
    ap.add_argument(
        "--new-site-epochs",
        type=float,
        default=1.0,
        help="new site: at least this many passes over the k documents' windows (at a fixed "
        "step count a larger k only changes which windows are seen)",
    )
    ap.add_argument("--k", type=int, nargs="+", default=[0, 5, 10, 25, 50])
    ap.add_argument(
        "--max-train-docs",
        type=int,
        default=None,
        help="keep this many training documents per site (after the split)",
    )
    ap.add_argument(
        "--mask-unannotated",
        action="store_true",
        help="train.mask_unannotated_types for every LLM model",
    )
    ap.add_argument("--sweep", action="store_true", help="add the federated sweep's variants")
    ap.add_argument(
        "--sweep-schedules",
        nargs="+",
        default=["8x5", "2x20", "12x10"],
        help="ROUNDSxSTEPS: the default's steps per site (equal compute) or sites times "
        "them (each site as many sequential steps as centralized)",
    )
    ap.add_argument("--sweep-lr", type=float, nargs="*", default=[1e-3, 4e-3])
    ap.add_argument("--sweep-warmup", type=int, nargs="*", default=[10])
    ap.add_argument("--server-momentum", type=float, default=0.9, help="FedAvgM's momentum")
    ap.add_argument("--size-mix", type=float, default=0.5, help="Fed-MedLoRA+'s size mix")
    ap.add_argument(
        "--corrupt-site",
        default=None,
        help="adds Fed-MedLoRA(+) with this site corrupted (fed:corrupt, fed+:corrupt)",
    )
    ap.add_argument("--corrupt-fraction", type=float, default=0.5)
    ap.add_argument("--skip-bert", action="store_true")
    ap.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="run only these methods or families (e.g. fedmedlora centralized "
        "single-site new-site); the rest can be added later with --resume",
    )
    ap.add_argument("--bootstrap", type=int, default=2000, help="resamples per interval")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="keep the cells already in OUT/results.json (same arguments)",
    )
    return ap


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    quiet_libraries()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    bench = Bench(out, args)
    if args.resume and (out / "results.json").is_file():
        bench.resume(json.loads((out / "results.json").read_text()))
    folder = prepare_splits(args, out, load_schema())
    sets, ncbi_train = load_sets(folder)
    bench.use_sets(describe_sets(sets, folder))
    bench.data["evaluation"] = (
        "whole test splits"
        if args.eval_windows == 0
        else f"{args.eval_windows} seeded windows per test set (fewer where a set has fewer)"
    )
    bench.save()
    todo = pending(planned_cells(args), bench.data["cells"], variants(args), args.new_site_epochs)
    bench.log(f"{len(todo)} cells to run: {todo}")
    for cell in todo:
        run_cell(cell, bench, args, folder, sets, ncbi_train)
    write_report(bench.data, out)
    bench.log(f"done: {out / 'report.md'}")
    return bench.data


if __name__ == "__main__":
    main()
