"""Tables and plots for benchmarks/clinical_ie.py; also regenerates them from a saved run:

.venv/bin/python benchmarks/clinical_ie_report.py benchmarks/results/clinical_ie
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

SITES = ("maccrobat", "chia", "bc5cdr")
EXTERNAL = ("ncbi_test", "bc5cdr_test")
LLM_ROWS = (
    ("zero-shot", "zero-shot LLM"),
    ("single-site", "single-site LLM"),
    ("centralized", "centralized LLM"),
    ("fedmedlora", "Fed-MedLoRA"),
)
BERT_ROWS = (
    ("bert-single-site", "BERT single-site"),
    ("bert-centralized", "BERT centralized"),
    ("bert-fed", "BERT federated"),
)


def _scores(data: dict, row: str, site: str) -> dict | None:
    """The scores of a table row on a set; 'single-site' rows use that site's own model."""
    methods = data["methods"]
    key = f"{row}:{site}" if row.endswith("single-site") else row
    entry = methods.get(key)
    return entry["scores"].get(site) if entry else None


def _pair(s: dict | None, kind: str) -> str:
    if s is None:
        return "-"
    return f"{s[f'{kind}_strict_f1']:.3f} / {s[f'{kind}_lenient_f1']:.3f}"


def _rows(data: dict) -> list[tuple[str, str]]:
    return [
        r
        for r in (*LLM_ROWS, *BERT_ROWS)
        if any(k == r[0] or k.startswith(r[0] + ":") for k in data["methods"])
    ]


def markdown(data: dict[str, Any]) -> str:
    args = data["args"]
    sets = data["sets"]
    lines = [
        "# Clinical IE benchmark",
        "",
        f"Model `{args['model']}` (LLM) and `{args['bert_model']}` (BERT baseline); "
        f"{args['rounds']} rounds x {args['local_steps']} LLM steps (batch "
        f"{args['batch_size']}) per site; evaluation on {args['eval_windows']} seeded "
        f"windows per test set; seed {args['seed']}. Cells: strict / lenient F1.",
        "",
    ]
    lines += [
        "| set | setting | train docs | test windows | entities | relations | types |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in sets.items():
        lines.append(
            f"| {name} | {s['setting']} | {s.get('train_documents', 'none')} | "
            f"{s['windows']} | {s['entities']} | {s['relations']} | "
            f"{', '.join(s['entity_types'])} |"
        )
    rows = _rows(data)
    relation_sites = [s for s in SITES if sets.get(s, {}).get("relation_types")]
    for title, columns, kind in (
        ("In-domain: entity F1", SITES, "entity"),
        ("In-domain: relation F1 (sites that annotate relations)", relation_sites, "relation"),
    ):
        lines += [
            "",
            f"## {title}",
            "",
            "| method | " + " | ".join(columns) + " |",
            "|---|" + "---|" * len(columns),
        ]
        for key, label in rows:
            cells = [_pair(_scores(data, key, c), kind) for c in columns]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Single-site rows: each column is the model trained on that site alone. "
        "BERT relations come from linking each modifier to the nearest compatible main "
        "entity.",
        "",
        "## External validation: entity F1 (never trained on)",
        "",
        "| method | " + " | ".join(EXTERNAL) + " |",
        "|---|" + "---|" * len(EXTERNAL),
    ]
    for key, entry in data["methods"].items():
        cells = [_pair(entry["scores"].get(c), "entity") for c in EXTERNAL]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    if data.get("new_site"):
        lines += [
            "",
            "## New site (NCBI-disease) with k labelled documents: entity F1",
            "",
            f"Same budget from both starts: {args['new_site_steps']} steps (k = 0: no "
            "training; the base model is prompted zero-shot).",
            "",
            "| k | from base model | from Fed-MedLoRA adapter |",
            "|---|---|---|",
        ]
        for k, row in data["new_site"].items():
            lines.append(
                f"| {k} | {_pair(row.get('base'), 'entity')} | "
                f"{_pair(row.get('fedmedlora'), 'entity')} |"
            )
    if data.get("fedmedlora_rounds"):
        lines += [
            "",
            "## Fed-MedLoRA per round (in-domain, entity strict F1)",
            "",
            "| round | " + " | ".join(SITES) + " | micro |",
            "|---|" + "---|" * 4,
        ]
        for r in data["fedmedlora_rounds"]:
            if not r.get("sites"):
                continue
            cells = [
                f"{r['sites'][s]['entity_strict_f1']:.3f}" if s in r["sites"] else "-"
                for s in SITES
            ]
            lines.append(
                f"| {r['round']} | "
                + " | ".join(cells)
                + f" | {r['micro']['entity_strict_f1']:.3f} |"
            )
    comm = data.get("communication")
    if comm:
        lines += [
            "",
            f"Communication per round (training, all sites): "
            f"{comm.get('adapter_bytes_per_round', 0) / 2**20:.1f} MiB vs "
            f"{comm.get('full_model_bytes_per_round', 0) / 2**30:.2f} GiB for full-model "
            "FedAvg.",
        ]
    lines += ["", "## Time (s)", "", "| phase | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in data["timing_s"].items()]
    lines += ["", "![in-domain](in_domain.png)", "", "![new site](new_site.png)", ""]
    return "\n".join(lines)


def plots(data: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows(data)
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(1, len(rows))
    for i, (key, label) in enumerate(rows):
        ys = [(_scores(data, key, s) or {}).get("entity_strict_f1", 0) for s in SITES]
        ax.bar([x + i * width for x in range(len(SITES))], ys, width, label=label)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(SITES))], SITES)
    ax.set_ylabel("entity strict F1 (in-domain)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "in_domain.png", dpi=120)
    plt.close(fig)

    if data.get("new_site"):
        ks = sorted(int(k) for k in data["new_site"])
        fig, ax = plt.subplots(figsize=(6, 4))
        for start, label in (("base", "from base model"), ("fedmedlora", "from Fed-MedLoRA")):
            ax.plot(
                ks,
                [data["new_site"][str(k)][start]["entity_strict_f1"] for k in ks],
                marker="o",
                label=label,
            )
        ax.set_xlabel("labelled documents at the new site (NCBI-disease)")
        ax.set_ylabel("entity strict F1")
        ax.set_ylim(0, 1)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "new_site.png", dpi=120)
        plt.close(fig)


def write_report(data: dict[str, Any], out: Path) -> None:
    (out / "report.md").write_text(markdown(data), encoding="utf-8")
    plots(data, out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Rewrite report.md and plots from results.json.")
    ap.add_argument("folder", type=Path, help="a clinical_ie output folder")
    folder = ap.parse_args().folder
    if not (folder / "results.json").is_file():
        raise SystemExit(f"{folder}: no results.json (run benchmarks/clinical_ie.py first)")
    write_report(json.loads((folder / "results.json").read_text()), folder)
    print(folder / "report.md")
