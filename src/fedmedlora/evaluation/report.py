"""report.md and plots from results.json (F1 per site per round; bytes per round)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedmedlora.evaluation.results import HEADLINE


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def plot_f1(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r for r in results["rounds"] if "sites" in r]
    sites = sorted({s for r in rounds for s in r["sites"]})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, metric in zip(axes, ("entity_strict_f1", "entity_lenient_f1"), strict=True):
        for site in sites:
            xs = [r["round"] for r in rounds if site in r["sites"]]
            ys = [r["sites"][site][metric] for r in rounds if site in r["sites"]]
            ax.plot(xs, ys, marker="o", label=site)
        ax.plot(
            [r["round"] for r in rounds],
            [r["micro"][metric] for r in rounds],
            marker="s",
            linestyle="--",
            color="black",
            label="all sites (micro)",
        )
        ax.set_title(metric.replace("_", " "))
    save_f1_figure(fig, axes, path)


def save_f1_figure(fig, axes, path: Path) -> None:
    """The look every F1-per-round figure shares (rounds as whole numbers, F1 in [0, 1])."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.set_xlabel("round (0 = zero-shot base model)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("F1")
    axes[-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bytes(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comm = results["communication"]
    rows = [r for r in comm["per_round"] if r["round"] > 0]
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["round"] for r in rows]
    ax.bar([x - 0.2 for x in xs], [r["train_down_bytes"] for r in rows], 0.4, label="down")
    ax.bar([x + 0.2 for x in xs], [r["train_up_bytes"] for r in rows], 0.4, label="up")
    if "full_model_bytes_per_round" in comm:
        ax.axhline(
            comm["full_model_bytes_per_round"] / 2,
            color="red",
            linestyle="--",
            label="full model, one direction",
        )
    ax.set_yscale("log")
    smallest = min([r["train_up_bytes"] for r in rows] + [r["train_down_bytes"] for r in rows])
    ax.set_ylim(bottom=max(1, smallest / 10))
    ax.set_xticks(xs)
    ax.set_xlabel("round")
    ax.set_ylabel("bytes on the wire (training messages, all sites)")
    ax.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(results: dict[str, Any]) -> str:
    run = results["run"]
    lines = [f"# fedmedlora run: {run.get('name', '')}", ""]
    lines.append(
        f"Model `{run.get('model')}`, {run.get('rounds')} rounds, "
        f"sites: {', '.join(run.get('sites', []))}. Status: {run.get('status')}, "
        f"{run.get('seconds', 0):.0f} s."
    )
    lines.append("")
    zero, final = results.get("zero_shot"), results.get("final")
    if final:
        lines += [
            "## Entity and relation F1 per site: zero-shot vs federated",
            "",
            "| site | setting | " + " | ".join(HEADLINE) + " |",
            "|---|---|" + "---|" * len(HEADLINE),
        ]
        for site in sorted(final["sites"]):
            for label, block in (
                ("zero-shot", zero),
                (f"federated (round {final['round']})", final),
            ):
                if block and site in block["sites"]:
                    vals = " | ".join(f"{block['sites'][site][k]:.3f}" for k in HEADLINE)
                    lines.append(f"| {site} | {label} | {vals} |")
        for label, block in (("zero-shot", zero), ("federated", final)):
            if block:
                vals = " | ".join(f"**{block['micro'][k]:.3f}**" for k in HEADLINE)
                lines.append(f"| all sites (micro) | {label} | {vals} |")
        lines.append("")
        lines += [
            "Strict: exact span and type. Lenient: overlapping span, same type. Each site",
            "is scored only on the types it annotates.",
            "",
        ]
    rounds = [r for r in results["rounds"] if "sites" in r]
    if rounds:
        lines += [
            "## Per round (entity strict / lenient F1)",
            "",
            "| round | " + " | ".join(sorted(rounds[-1]["sites"])) + " | micro |",
            "|---|" + "---|" * (len(rounds[-1]["sites"]) + 1),
        ]
        for r in rounds:
            cells = [
                f"{r['sites'][s]['entity_strict_f1']:.3f} / "
                f"{r['sites'][s]['entity_lenient_f1']:.3f}"
                if s in r["sites"]
                else "-"
                for s in sorted(rounds[-1]["sites"])
            ]
            cells.append(
                f"{r['micro']['entity_strict_f1']:.3f} / {r['micro']['entity_lenient_f1']:.3f}"
            )
            lines.append(f"| {r['round']} | " + " | ".join(cells) + " |")
        lines += ["", "![F1 per site per round](f1_per_round.png)", ""]
    lines += _contributions(results)
    lines += _privacy(results)
    comm = results["communication"]
    lines += [
        "## Communication",
        "",
        f"- adapter tensors: {fmt_bytes(comm['adapter_bytes'])} "
        f"({comm['adapter_parameters']:,} parameters)",
        f"- full model: {fmt_bytes(comm['full_model_bytes'])} "
        f"({comm['model_parameters']:,} parameters)",
    ]
    if "adapter_bytes_per_round" in comm:
        lines += [
            f"- training traffic per round (all sites, down + up, as serialized by "
            f"Flower): {fmt_bytes(comm['adapter_bytes_per_round'])}, vs "
            f"{fmt_bytes(comm['full_model_bytes_per_round'])} for full-model FedAvg "
            f"({comm['reduction_factor']:.0f}x less)"
        ]
    lines += [
        "",
        "| round | train down | train up | evaluate down | evaluate up |",
        "|---|---|---|---|---|",
    ]
    for r in comm["per_round"]:
        lines.append(
            f"| {r['round']} | {fmt_bytes(r['train_down_bytes'])} | "
            f"{fmt_bytes(r['train_up_bytes'])} | {fmt_bytes(r['evaluate_down_bytes'])}"
            f" | {fmt_bytes(r['evaluate_up_bytes'])} |"
        )
    lines += ["", "![bytes per round](bytes_per_round.png)", ""]
    if results.get("rejected_replies"):
        lines += ["## Rejected replies", ""] + [f"- {r}" for r in results["rejected_replies"]]
    return "\n".join(lines) + "\n"


def _contributions(results: dict[str, Any]) -> list[str]:
    """Each site's share of every round's aggregate: with Fed-MedLoRA+ these are its
    data-aware contribution scores, otherwise its share of the examples."""
    trained = [r for r in results["rounds"] if r.get("train")]
    sites = sorted({s for r in trained for s in r["train"]})
    if not sites:
        return []
    method = results["run"].get("aggregation", "fedmedlora")
    lines = [
        f"## Site contributions ({method}): weight of each site in the aggregate",
        "",
        "| round | " + " | ".join(sites) + " |",
        "|---|" + "---|" * len(sites),
    ]
    for r in trained:
        cells = []
        for s in sites:
            m = r["train"].get(s, {})
            w = m.get("aggregation-weight")
            loss = m.get("server-val-loss", m.get("val-loss"))
            cell = "-" if w is None else f"{w:.3f}"
            if w is not None and loss is not None:
                cell += f" (val loss {loss:.3f})"
            cells.append(cell)
        lines.append(f"| {r['round']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _privacy(results: dict[str, Any]) -> list[str]:
    """The differential-privacy budget spent, round by round (RDP accountant)."""
    spent = results.get("privacy") or {}
    if not spent:
        return []
    lines = [
        "## Differential privacy (client-level, central)",
        "",
        "| round | epsilon spent | delta | noise std | updates clipped |",
        "|---|---|---|---|---|",
    ]
    for rnd in sorted(spent, key=int):
        p = spent[rnd]
        lines.append(
            f"| {rnd} | {p['epsilon']:.3f} | {p['delta']:g} | {p['noise_std']:.4g} | "
            f"{p['clipped_updates']} of {p['updates']} |"
        )
    return [*lines, ""]


def write_report(results: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    paths = [out_dir / "report.md", out_dir / "f1_per_round.png", out_dir / "bytes_per_round.png"]
    paths[0].write_text(markdown(results), encoding="utf-8")
    plot_f1(results, paths[1])
    plot_bytes(results, paths[2])
    return paths
