"""Tables, paired comparisons and plots for benchmarks/clinical_ie.py; also regenerates
them from a saved run:

.venv/bin/python benchmarks/clinical_ie_report.py benchmarks/results/clinical_ie

A cell's F1 is the mean over its training seeds; intervals resample test documents
(evaluation/bootstrap.py), the same resample for both sides of a comparison.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

from fedmedlora.evaluation.bootstrap import bootstrap_f1, key_slice, paired_bootstrap

SITES = ("maccrobat", "chia", "bc5cdr")
EXTERNAL = ("ncbi_test", "bc5cdr_test")
IN_DOMAIN = "in-domain (micro)"  # the three in-domain sets pooled


def runs_of(data: dict[str, Any], method: str) -> list[str]:
    """The cells of `method` (one per training seed), in seed order."""
    cells = data["cells"]
    return sorted(
        (c for c in cells if c == method or c.startswith(method + "@")),
        key=lambda c: int(c.partition("@")[2] or 0),
    )


def methods_of(data: dict[str, Any]) -> list[str]:
    seen: dict[str, None] = {}
    for c in data["cells"]:
        seen.setdefault(c.partition("@")[0], None)
    return list(seen)


def counts(
    data: dict[str, Any],
    cells: list[str],
    set_name: str,
    kind: str = "entity",
    mode: str = "strict",
    seeds: list[int] | None = None,
) -> tuple[list, list[str]] | None:
    """([runs][items][tp, fp, fn], groups) of `cells` on a set (IN_DOMAIN: the in-domain
    sets concatenated); None if a cell lacks the set."""
    names = list(SITES) if set_name == IN_DOMAIN else [set_name]
    part = key_slice(kind, mode)
    runs, groups = [], []
    for cell in cells:
        rows: list = []
        for n in names:
            entry = data["cells"][cell]["sets"].get(n)
            if entry is None:
                return None
            rows += [r[part] for r in entry["counts"]]
        runs.append(rows)
    for n in names:
        groups += [f"{n}/{g}" for g in data["sets"][n]["groups"]]
    return runs, groups


def cell_f1(data: dict, method: str, set_name: str, kind="entity", mode="strict") -> dict | None:
    got = counts(data, runs_of(data, method), set_name, kind, mode)
    if not got or not got[0]:
        return None
    return bootstrap_f1(*got, n=data["args"].get("bootstrap", 2000))


def _same_seeds(data: dict, a: str, b: str) -> tuple[list[str], list[str]]:
    """Cells of a and b, paired on the training seeds both have (all of each if they
    share none). A one-seed sweep variant against a three-seed baseline is thus compared
    on its own seed: the same initialisation and data order on both sides, and the same
    amount of seed noise."""
    ca, cb = runs_of(data, a), runs_of(data, b)
    seeds = {c.partition("@")[2] for c in ca} & {c.partition("@")[2] for c in cb}
    if seeds:
        ca = [c for c in ca if c.partition("@")[2] in seeds]
        cb = [c for c in cb if c.partition("@")[2] in seeds]
    return ca, cb


def compare(data: dict, a: str, b: str, set_name: str, mode: str = "strict") -> dict | None:
    """F1(b) - F1(a) on one set, with its paired interval (test documents resampled), and
    the difference seed by seed where both sides share several training seeds: the
    interval does not hold the seed-to-seed spread, these show it."""
    ca, cb = _same_seeds(data, a, b)
    ga, gb = counts(data, ca, set_name, mode=mode), counts(data, cb, set_name, mode=mode)
    if not ga or not gb or not ga[0] or not gb[0]:
        return None
    got = paired_bootstrap(ga[0], gb[0], ga[1], n=data["args"].get("bootstrap", 2000))
    per_seed = []
    if len(ca) > 1 and [c.partition("@")[2] for c in ca] == [c.partition("@")[2] for c in cb]:
        per_seed = [
            round(_point_f1(rb) - _point_f1(ra), 4) for ra, rb in zip(ga[0], gb[0], strict=True)
        ]
    return {
        "set": set_name,
        **got,
        "a": a,
        "b": b,
        "f1_a": got["a"],
        "f1_b": got["b"],
        "per_seed": per_seed,
    }


def _point_f1(run: list) -> float:
    """Micro F1 of one run's [items][tp, fp, fn] counts."""
    tp, fp, fn = (sum(item[i] for item in run) for i in range(3))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def best_single_site(data: dict, set_name: str, prefix: str = "single-site") -> str | None:
    """The single-site model with the highest point F1 on a set (chosen after the fact:
    the comparison flatters the single site)."""
    scored = [
        (f["f1"], m)
        for m in methods_of(data)
        # `single-site:SITE` only: a longer-trained `single-site:SITE:STEPS` is the
        # counterpart of a longer federated schedule, not a candidate for the default's
        if m.startswith(prefix + ":") and m.count(":") == 1 and (f := cell_f1(data, m, set_name))
    ]
    return max(scored)[1] if scored else None


def comparisons(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The paired differences the issue asks for, where the run has both sides."""
    out: list[dict] = []
    methods = methods_of(data)

    def add(a: str, b: str, sets, label: str) -> None:
        for s in sets:
            got = compare(data, a, b, s) if a in methods and b in methods else None
            if got:
                out.append({"comparison": label, **got})

    in_domain = [IN_DOMAIN, *SITES]
    add("centralized", "fedmedlora", in_domain + list(EXTERNAL), "federated - centralized")
    for s in (*SITES, *EXTERNAL):
        best = best_single_site(data, s)
        if best:
            add(best, "fedmedlora", [s], "federated - best single site")
            for m in methods:  # a longer schedule against that site trained as long
                if (long := single_counterpart(m, best)) and long in methods:
                    add(long, m, [s], f"{m} - best single site (sweep, same steps per site)")
    corrupt_sets = in_domain + list(EXTERNAL)
    add("fed:corrupt", "fed+:corrupt", corrupt_sets, "Fed-MedLoRA+ - Fed-MedLoRA (corrupted site)")
    add("fedmedlora", "fed:plus-mix", in_domain, "Fed-MedLoRA+ (size mix) - Fed-MedLoRA")
    for m in methods:
        if m.startswith("fed:") and "corrupt" not in m and m != "fed:plus-mix":
            add("fedmedlora", m, [IN_DOMAIN], f"{m} - Fed-MedLoRA (sweep)")
            add("centralized", m, [IN_DOMAIN], f"{m} - centralized (sweep)")
            if pair := counterpart(m):  # pooling with this variant's compute or lr
                add(pair[0], m, [IN_DOMAIN], f"{m} - {pair[0]} (sweep, {pair[1]})")
    ks = sorted({int(m.split(":")[1][1:]) for m in methods if m.startswith("new-site:")})
    for k in ks:
        add(
            f"new-site:k{k}:base",
            f"new-site:k{k}:fed",
            ["ncbi_test"],
            f"new site k={k}: from federated - from base",
        )
    # does the start from federated gain with every step in k? (k = 0: the adapter itself)
    chain = [(0, "fedmedlora")] + [(k, f"new-site:k{k}:fed") for k in ks]
    for (k0, a), (k1, b) in itertools.pairwise(chain):
        add(a, b, ["ncbi_test"], f"new site from federated: k={k1} - k={k0}")
    add("bert-centralized", "bert-fed", in_domain, "BERT federated - BERT centralized")
    return out


def comparison_row(c: dict) -> str:
    seeds = ", ".join(f"{d:+.3f}" for d in c["per_seed"]) or "-"
    return (
        f"| {c['comparison']} | {c['set']} | {c['a']} {c['f1_a']:.3f} | {c['b']} "
        f"{c['f1_b']:.3f} | {_diff(c)} | {seeds} | {c['share_b_better']:.2f} |"
    )


def _cell(f: dict | None) -> str:
    if f is None:
        return "-"
    low, high = f["ci95"]
    return f"{f['f1']:.3f} [{low:.3f}, {high:.3f}]"


def _diff(c: dict) -> str:
    low, high = c["ci95"]
    return f"{c['difference']:+.3f} [{low:+.3f}, {high:+.3f}]"


def markdown(data: dict[str, Any]) -> str:
    args, sets = data["args"], data["sets"]
    seeds = sorted({c.partition("@")[2] for c in data["cells"] if "@" in c})
    lines = [
        "# Clinical IE benchmark",
        "",
        f"Model `{args['model']}` (LLM) and `{args['bert_model']}` (BERT baseline); "
        f"{args['rounds']} rounds x {args['local_steps']} LLM steps (batch "
        f"{args['batch_size']}, lr {args['lr']:g}, warmup {args['warmup']}) per site; "
        f"evaluation: {data.get('evaluation', '?')}; training seeds {', '.join(seeds) or '-'} "
        f"(split seed {args['seed']}). Cells: entity strict F1, mean over seeds, "
        f"[95% interval, {args.get('bootstrap', 2000)} resamples of test documents].",
        "",
        "| set | setting | train docs | test windows | test documents | entities | types |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in sets.items():
        lines.append(
            f"| {name} | {s['setting']} | {s.get('train_documents', 'none')} | "
            f"{s['windows']} | {s['documents']} | {s['entities']} | "
            f"{', '.join(s['entity_types'])} |"
        )
    columns = [IN_DOMAIN, *SITES, *EXTERNAL]
    methods = [m for m in methods_of(data) if not m.startswith("new-site:")]
    lines += [
        "",
        "## Entity strict F1",
        "",
        "| method | seeds | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for m in methods:
        cells = [_cell(cell_f1(data, m, c)) for c in columns]
        lines.append(f"| {m} | {len(runs_of(data, m))} | " + " | ".join(cells) + " |")
    rel = [s for s in SITES if sets.get(s, {}).get("relation_types")]
    if rel:
        lines += [
            "",
            "## Relation strict F1 (sites that annotate relations)",
            "",
            "| method | " + " | ".join(rel) + " |",
            "|---|" + "---|" * len(rel),
        ]
        for m in methods:
            cells = [_cell(cell_f1(data, m, c, kind="relation")) for c in rel]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    comps = comparisons(data)
    if comps:
        lines += [
            "",
            "## Paired differences (entity strict F1, b - a)",
            "",
            "The interval resamples test documents; `per seed` is the difference of each "
            "training seed both sides share (the spread the interval does not hold).",
            "",
            "| comparison | set | a | b | b - a [95% interval] | per seed | "
            "share of resamples b > a |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [comparison_row(c) for c in comps]
    new_site = new_site_rows(data)
    if new_site:
        lines += [
            "",
            "## New site (NCBI-disease) with k labelled documents: entity strict F1",
            "",
            f"{args.get('new_site_epochs', 0):g} epochs over the k documents' windows, "
            f"at least {args['new_site_steps']} steps (steps: as trained, over seeds), "
            f"lr {args['lr']:g}, the same from both starts; seeds averaged (the k "
            "documents are drawn again for each seed); k = 0: the zero-shot base model "
            "and the federated adapter as they are.",
            "",
            "| k | steps | from base model | from Fed-MedLoRA adapter |",
            "|---|---|---|---|",
        ]
        for k, base, fed in new_site:
            lines.append(f"| {k} | {new_site_steps(data, k)} | {_cell(base)} | {_cell(fed)} |")
    lines += ["", "## Time (s)", "", "| cell | seconds |", "|---|---|"]
    lines += [f"| {c} | {v['seconds']:.0f} |" for c, v in data["cells"].items()]
    lines += [f"| total | {data['timing_s'].get('total', 0):.0f} |"]
    lines += ["", "![in-domain](in_domain.png)", ""]
    if new_site:
        lines += ["![new site](new_site.png)", ""]
    if sweep_points(data):
        lines += ["![sweep](sweep.png)", ""]
    return "\n".join(lines)


def new_site_rows(data: dict) -> list[tuple[int, dict | None, dict | None]]:
    methods = methods_of(data)
    ks = sorted({int(m.split(":")[1][1:]) for m in methods if m.startswith("new-site:")})
    if not ks:
        return []
    rows = [(0, cell_f1(data, "zero-shot", "ncbi_test"), cell_f1(data, "fedmedlora", "ncbi_test"))]
    for k in ks:
        rows.append(
            (
                k,
                cell_f1(data, f"new-site:k{k}:base", "ncbi_test"),
                cell_f1(data, f"new-site:k{k}:fed", "ncbi_test"),
            )
        )
    return rows


def new_site_steps(data: dict, k: int) -> str:
    """The steps the k-document cells trained (the fixed-step protocol's cells record
    none beyond `steps`): one number, or the range over seeds and starts."""
    if k == 0:
        return "0"
    steps = sorted(
        {
            data["cells"][c].get("steps", data["args"]["new_site_steps"])
            for start in ("base", "fed")
            for c in runs_of(data, f"new-site:k{k}:{start}")
        }
    )
    return "-".join(str(x) for x in dict.fromkeys((steps[0], steps[-1]))) if steps else ""


def schedule_of(method: str) -> tuple[int, int] | None:
    """(rounds, local steps) of a schedule variant `fed:ROUNDSxSTEPS`, else None."""
    r, x, st = method.removeprefix("fed:").partition("x")
    if method.startswith("fed:") and x and r.isdigit() and st.isdigit():
        return int(r), int(st)
    return None


def central_cell(rounds: int, steps: int) -> str:
    """The centralized cell with the total steps of `rounds` x `steps` at every site."""
    return f"centralized:{len(SITES) * rounds * steps}"


def single_cell(site_method: str, steps: int) -> str:
    """`single-site:SITE` trained for `steps` steps instead of the default's."""
    return f"{site_method}:{steps}"


def single_counterpart(method: str, best: str) -> str | None:
    """The single-site cell trained as many steps as each site of a schedule variant
    `fed:ROUNDSxSTEPS` (the fair single-site side of its external comparison)."""
    sched = schedule_of(method)
    return single_cell(best, sched[0] * sched[1]) if sched else None


def lr_of(method: str) -> float | None:
    """The learning rate of a variant `fed:lrX` or `centralized:lrX`, else None."""
    if not method.startswith(("fed:lr", "centralized:lr")):
        return None
    try:
        return float(method.partition(":lr")[2])
    except ValueError:
        return None


def central_lr_cell(lr: float) -> str:
    return f"centralized:lr{lr:g}"


def counterpart(method: str) -> tuple[str, str] | None:
    """(centralized cell, what it shares) for a federated sweep variant that changes the
    compute or the learning rate: `fed:12x10` -> `centralized:360` (same total steps,
    three sites), `fed:lr0.004` -> `centralized:lr0.004` (same learning rate: a rate that
    helps federated may help pooling as much). None for other variants."""
    if sched := schedule_of(method):
        return central_cell(*sched), "same total steps"
    if (lr := lr_of(method)) is not None:
        return central_lr_cell(lr), "same learning rate"
    return None


def sweep_points(data: dict) -> list[tuple[str, int, int, dict]]:
    """(method, rounds, local steps, in-domain F1) of the default run and each schedule."""
    args = data["args"]
    out = []
    for m in methods_of(data):
        if m == "fedmedlora":
            r, s = args["rounds"], args["local_steps"]
        elif sched := schedule_of(m):
            r, s = sched
        else:
            continue
        f = cell_f1(data, m, IN_DOMAIN)
        if f:
            out.append((m, r, s, f))
    return sorted(out, key=lambda p: (p[1] * p[2], p[1]))  # steps per site, then rounds


def _errors(fs: list[dict]) -> list[list[float]]:
    """Matplotlib's yerr (below, above) of F1 values with intervals."""
    return [[f["f1"] - f["ci95"][0] for f in fs], [f["ci95"][1] - f["f1"] for f in fs]]


def _line(ax, xs: list, fs: list[dict], label: str) -> None:
    ax.errorbar(xs, [f["f1"] for f in fs], yerr=_errors(fs), marker="o", capsize=3, label=label)


def _save(fig, ax, path: Path, xlabel: str, ylabel: str) -> None:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plots(data: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in methods_of(data) if not m.startswith("new-site:")]
    columns = [IN_DOMAIN, *SITES, *EXTERNAL]
    fig, ax = plt.subplots(figsize=(12, 4))
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        scored = [(x, f) for x, c in enumerate(columns) if (f := cell_f1(data, m, c))]
        fs = [f for _, f in scored]
        xs = [x + i * width for x, _ in scored]
        ax.bar(xs, [f["f1"] for f in fs], width, yerr=_errors(fs), capsize=2, label=m)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(columns))], columns, fontsize=8)
    _save(fig, ax, out / "in_domain.png", "test set", "entity strict F1 (95% interval)")

    rows = new_site_rows(data)
    if rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, label in ((1, "from base model"), (2, "from Fed-MedLoRA")):
            pts = [(r[0], r[i]) for r in rows if r[i]]
            _line(ax, [k for k, _ in pts], [f for _, f in pts], label)
        _save(
            fig,
            ax,
            out / "new_site.png",
            "labelled documents at the new site (NCBI-disease)",
            "entity strict F1",
        )

    points = sweep_points(data)
    if points:
        fig, ax = plt.subplots(figsize=(6, 4))
        _line(ax, list(range(len(points))), [p[3] for p in points], "Fed-MedLoRA")
        central = cell_f1(data, "centralized", IN_DOMAIN)
        if central:
            steps = len(SITES) * data["args"]["rounds"] * data["args"]["local_steps"]
            label = f"centralized ({steps} steps)"
            ax.axhline(central["f1"], color="gray", linestyle="--", label=label)
            ax.axhspan(*central["ci95"], color="gray", alpha=0.15)
        for m in methods_of(data):  # pooling at a longer schedule's total compute
            if m.startswith("centralized:") and (f := cell_f1(data, m, IN_DOMAIN)):
                label = f"centralized ({m.split(':')[1]} steps)"
                ax.axhline(f["f1"], color="black", linestyle=":", label=label)
                ax.axhspan(*f["ci95"], color="black", alpha=0.08)
        ticks = [f"{p[1]} x {p[2]}\n({p[1] * p[2]})" for p in points]
        ax.set_xticks(range(len(points)), ticks, fontsize=8)
        _save(
            fig,
            ax,
            out / "sweep.png",
            "rounds x local steps (steps per site)",
            "in-domain micro entity strict F1",
        )


def summary(data: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers as JSON (docs/measured keeps this beside the raw cells)."""
    columns = [IN_DOMAIN, *SITES, *EXTERNAL]
    return {
        "cells": {m: {c: cell_f1(data, m, c) for c in columns} for m in methods_of(data)},
        "comparisons": comparisons(data),
    }


def write_report(data: dict[str, Any], out: Path) -> None:
    (out / "report.md").write_text(markdown(data), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary(data), indent=1) + "\n")
    plots(data, out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Rewrite report.md and plots from results.json.")
    ap.add_argument("folder", type=Path, help="a clinical_ie output folder")
    folder = ap.parse_args().folder
    if not (folder / "results.json").is_file():
        raise SystemExit(f"{folder}: no results.json (run benchmarks/clinical_ie.py first)")
    write_report(json.loads((folder / "results.json").read_text()), folder)
    print(folder / "report.md")
