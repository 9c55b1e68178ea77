"""Every federated variant of a clinical_ie run against centralized and the best single
site, on every set, paired (the report itself compares the sweep's variants only on the
pooled in-domain sets); a schedule that gives each site more steps than the default is
also compared with the centralized run of its total compute (`centralized:STEPS`), and a
learning-rate variant with the centralized run at that rate (`centralized:lrX`), and a
longer schedule with the best single site trained as many steps per site
(`single-site:SITE:STEPS`, where run):

.venv/bin/python benchmarks/clinical_ie_variants.py benchmarks/results/clinical_ie

Prints a markdown table and writes OUT/variants.json. Choosing the "best" variant from
these same test sets flatters it; the table shows every variant for that reason.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clinical_ie_report import (
    EXTERNAL,
    IN_DOMAIN,
    SITES,
    best_single_site,
    compare,
    counterpart,
    methods_of,
    single_counterpart,
)


def matched_central(data: dict, variant: str) -> tuple[str, str | None]:
    """(label, centralized cell) sharing a variant's total steps or learning rate, if run."""
    pair = counterpart(variant)
    if pair is None:
        return "centralized, matched", None
    return f"centralized, {pair[1]}", pair[0] if pair[0] in methods_of(data) else None


def rows(data: dict) -> list[dict]:
    methods = methods_of(data)
    fed = [m for m in methods if m == "fedmedlora" or m.startswith("fed:")]
    out = []
    for m in fed:
        for s in (IN_DOMAIN, *SITES, *EXTERNAL):
            best = best_single_site(data, s) if s != IN_DOMAIN else None
            long = single_counterpart(m, best) if best else None
            for label, ref in (
                ("centralized", "centralized"),
                matched_central(data, m),
                ("best single site", best),
                ("best single site, same steps per site", long if long in methods else None),
            ):
                got = compare(data, ref, m, s) if ref else None
                if got:
                    out.append({"variant": m, "against": label, **got})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="a clinical_ie output folder (results.json)")
    args = ap.parse_args()
    data = json.loads((args.out / "results.json").read_text())
    got = rows(data)
    (args.out / "variants.json").write_text(json.dumps(got, indent=1))
    print("| variant | against | set | variant F1 | other F1 | difference [95% interval] |")
    print("|---|---|---|---|---|---|")
    for r in got:
        low, high = r["ci95"]
        print(
            f"| {r['variant']} | {r['against']} ({r['a']}) | {r['set']} | {r['f1_b']:.3f} | "
            f"{r['f1_a']:.3f} | {r['difference']:+.3f} [{low:+.3f}, {high:+.3f}] |"
        )


if __name__ == "__main__":
    main()
