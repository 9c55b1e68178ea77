"""Runs side by side from their results.json: headline F1 per site and micro, traffic,
time, the settings that differ, and F1 per round; refused when the runs were not scored
on the same sites and types."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmedlora.errors import FedMedLoRAError
from fedmedlora.evaluation.report import fmt_bytes, save_f1_figure
from fedmedlora.evaluation.results import HEADLINE
from fedmedlora.evaluation.tracking import flatten

# Settings that name or place a run rather than change what it computes.
NOT_SETTINGS = ("name", "tracking.")


@dataclass
class Run:
    label: str
    path: Path
    results: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return self.results["run"].get("config", {})

    def scored(self) -> dict[str, Any]:
        """What a score means here: the schema, the sites and the types each annotates."""
        data = self.config.get("data", {})
        sites = {
            s["name"]: {
                "entity_types": s.get("entity_types"),
                "relation_types": s.get("relation_types"),
            }
            for s in data.get("sites", [])
        }
        synthetic = data.get("synthetic") or {}
        sites |= {name: "synthetic" for name in synthetic.get("sites", [])}
        return {"schema": self.config.get("schema"), "sites": sites}


def load_run(path: Path) -> Run:
    file = Path(path) / "results.json"
    if not file.is_file():
        raise FedMedLoRAError(f"{path}: not a run folder (no results.json)")
    try:
        results = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise FedMedLoRAError(f"{file}: not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise FedMedLoRAError(f"{file}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(results, dict) or "run" not in results or "rounds" not in results:
        raise FedMedLoRAError(f"{file}: not a fedmedlora results.json (no run or rounds)")
    return Run(Path(path).name, Path(path), results)


def load_runs(paths: list[Path]) -> list[Run]:
    if len(paths) < 2:
        raise FedMedLoRAError("compare needs at least two run folders")
    runs = [load_run(p) for p in paths]
    if len({r.label for r in runs}) < len(runs):  # same folder names: use the paths
        for run in runs:
            run.label = str(run.path)
    check_compatible(runs)
    return runs


def check_compatible(runs: list[Run]) -> None:
    """Scores on other sites or types do not measure the same thing: refuse, naming how."""
    first = runs[0]
    want = first.scored()
    for other in runs[1:]:
        got = other.scored()
        if got["schema"] != want["schema"]:
            raise FedMedLoRAError(
                f"{first.path} and {other.path} are not comparable: schema "
                f"{want['schema']!r} vs {got['schema']!r}"
            )
        if set(got["sites"]) != set(want["sites"]):
            raise FedMedLoRAError(
                f"{first.path} and {other.path} are not comparable: sites "
                f"{sorted(want['sites'])} vs {sorted(got['sites'])}"
            )
        for site, types in want["sites"].items():
            theirs = got["sites"][site]
            for kind in ("entity_types", "relation_types"):
                mine = types.get(kind) if isinstance(types, dict) else types
                other_types = theirs.get(kind) if isinstance(theirs, dict) else theirs
                if mine != other_types:
                    raise FedMedLoRAError(
                        f"{first.path} and {other.path} are not comparable: site {site} "
                        f"annotates {kind.replace('_', ' ')} {mine or 'all'} vs "
                        f"{other_types or 'all'}"
                    )


def _cell(block: dict[str, Any], key: str) -> str:
    """F1, with its 95% interval where the run has one (`<key>_ci`: [low, high])."""
    if key not in block:
        return "–"
    ci = block.get(f"{key}_ci")
    return f"{block[key]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def differing_settings(runs: list[Run]) -> dict[str, list[str]]:
    flat = [flatten(r.config) for r in runs]
    keys = sorted({k for f in flat for k in f if not k.startswith(NOT_SETTINGS)})
    return {
        k: [f.get(k, "–") for f in flat] for k in keys if len({f.get(k, "–") for f in flat}) > 1
    }


def markdown(runs: list[Run]) -> str:
    labels = [r.label for r in runs]
    head = "| | " + " | ".join(labels) + " |\n|---|" + "---|" * len(runs)
    lines = ["# Runs compared", "", *(f"- **{r.label}**: `{r.path}`" for r in runs), ""]
    lines += ["## Final round, all sites (micro)", "", head]
    for key in HEADLINE:
        cells = [_cell(r.results.get("final", {}).get("micro", {}), key) for r in runs]
        lines.append(f"| {key.replace('_', ' ')} | " + " | ".join(cells) + " |")
    lines += ["", "## Final round per site (entity strict / lenient F1)", "", head]
    for site in sorted(runs[0].scored()["sites"]):
        cells = []
        for r in runs:
            block = r.results.get("final", {}).get("sites", {}).get(site, {})
            cells.append(
                f"{_cell(block, 'entity_strict_f1')} / {_cell(block, 'entity_lenient_f1')}"
            )
        lines.append(f"| {site} | " + " | ".join(cells) + " |")
    lines += ["", "## Cost", "", head]
    comm = [r.results.get("communication", {}) for r in runs]
    total = [sum(row["total_bytes"] for row in c.get("per_round", [])) for c in comm]
    rows = {
        "status": [r.results["run"].get("status", "–") for r in runs],
        "rounds": [str(r.results["run"].get("rounds", "–")) for r in runs],
        "time": [f"{r.results['run'].get('seconds', 0):.0f} s" for r in runs],
        "bytes per round": [
            fmt_bytes(c["adapter_bytes_per_round"]) if "adapter_bytes_per_round" in c else "–"
            for c in comm
        ],
        "bytes in all": [fmt_bytes(t) for t in total],
        "rejected replies": [str(len(r.results.get("rejected_replies", []))) for r in runs],
    }
    lines += [f"| {k} | " + " | ".join(v) + " |" for k, v in rows.items()]
    lines += ["", "## Settings that differ", ""]
    differ = differing_settings(runs)
    if differ:
        lines.append(head)
        lines += [f"| `{k}` | " + " | ".join(v) + " |" for k, v in differ.items()]
    else:
        lines.append("None: the runs share every setting.")
    lines += ["", "![F1 per round](compare_f1.png)", ""]
    return "\n".join(lines)


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, metric in zip(axes, ("entity_strict_f1", "entity_lenient_f1"), strict=True):
        for run in runs:
            rounds = [r for r in run.results["rounds"] if "micro" in r]
            ax.plot(
                [r["round"] for r in rounds],
                [r["micro"][metric] for r in rounds],
                marker="o",
                label=run.label,
            )
        ax.set_title(f"{metric.replace('_', ' ')}, all sites (micro)")
    save_f1_figure(fig, axes, path)


def write_comparison(runs: list[Run], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md, png = out_dir / "compare.md", out_dir / "compare_f1.png"
    plot(runs, png)
    md.write_text(markdown(runs), encoding="utf-8")
    return [md, png]
