"""Lenient entity matching time, one document with n same-type entities: the sparse
matcher (`fedmedlora.evaluation.metrics`: overlap pairs by a sweep, Hopcroft-Karp) against
the dense one it replaced (every pair compared, an n x n float64 matrix, scipy's
`linear_sum_assignment`), kept here as the baseline.

    nice .venv/bin/python benchmarks/lenient_matching.py [--sizes 1000 10000] [--old-max 10000]

The document: gold entities of 4-9 characters with gaps between them; the prediction
shifts each by 0-2 characters, misses a tenth and adds a tenth elsewhere, as a model
would. Both matchers must give the same true positives (checked). The dense matrix takes
8 n^2 bytes (0.8 GB at n = 10,000): `--old-max` skips the old matcher above that size.
Prints a table and writes JSON (default docs/measured/lenient_matching.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from fedmedlora.data.document import Document, Entity
from fedmedlora.evaluation.metrics import score_document

ROOT = Path(__file__).resolve().parents[1]


def old_lenient_tp(gold: list[Entity], pred: list[Entity]) -> int:
    """The dense matcher before this change (one entity type)."""
    pairs = [
        (i, j)
        for i, g in enumerate(gold)
        for j, p in enumerate(pred)
        if g.start < p.end and p.start < g.end
    ]
    if not pairs:
        return 0
    weight = np.zeros((len(gold), len(pred)))
    for g_, p_ in pairs:
        weight[g_, p_] = 1.0
    rows, cols = linear_sum_assignment(weight, maximize=True)
    return int(weight[rows, cols].sum())


def documents(n: int, seed: int) -> tuple[Document, Document]:
    rng = random.Random(seed)
    spans, pos = [], 0
    for _ in range(n):
        pos += rng.randint(2, 6)
        length = rng.randint(4, 9)
        spans.append((pos, pos + length))
        pos += length
    text = "x" * (pos + 20)
    pred_spans = []
    for s, e in spans:
        roll = rng.random()
        if roll < 0.1:
            continue  # missed
        shift = rng.randint(-2, 2)
        pred_spans.append((max(0, s + shift), e + shift))
        if roll > 0.9:  # an extra prediction near it
            pred_spans.append((e, e + 2))

    def doc(sp: list[tuple[int, int]]) -> Document:
        ents = [
            Entity(id=f"T{k}", type="problem", start=s, end=e, text=text[s:e])
            for k, (s, e) in enumerate(sp)
        ]
        return Document(id="d", text=text, entities=ents)

    return doc(spans), doc(pred_spans)


def measure(n: int, old: bool, seed: int) -> dict[str, Any]:
    gold, pred = documents(n, seed)
    t = time.perf_counter()
    new_tp = score_document(gold, pred).entity["lenient"]["problem"].tp
    row: dict[str, Any] = {
        "entities_gold": len(gold.entities),
        "entities_predicted": len(pred.entities),
        "new_seconds": round(time.perf_counter() - t, 4),
        "lenient_tp": new_tp,
    }
    if old:
        t = time.perf_counter()
        old_tp = old_lenient_tp(gold.entities, pred.entities)
        row["old_seconds"] = round(time.perf_counter() - t, 4)
        row["old_dense_matrix_bytes"] = 8 * len(gold.entities) * len(pred.entities)
        if old_tp != new_tp:
            raise SystemExit(f"n={n}: old matcher found {old_tp} matches, new {new_tp}")
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--old-max", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/measured/lenient_matching.json")
    args = parser.parse_args(argv)
    rows = {str(n): measure(n, n <= args.old_max, args.seed) for n in args.sizes}
    print(f"{'entities':>9} {'new s':>8} {'old s':>8} {'old matrix':>11}")
    for n, row in rows.items():
        old_s = f"{row['old_seconds']:8.3f}" if "old_seconds" in row else f"{'skipped':>8}"
        size = row.get("old_dense_matrix_bytes")
        matrix = f"{size / 1e6:8.0f} MB" if size else f"{'-':>11}"
        print(f"{n:>9} {row['new_seconds']:8.3f} {old_s} {matrix}")
    data = {
        "benchmark": "lenient_matching",
        "arguments": {"sizes": args.sizes, "old_max": args.old_max, "seed": args.seed},
        "machine": {"python": platform.python_version(), "processor": platform.machine()},
        "sizes": rows,
        # measure() stops the run if the two matchers disagree
        "old_and_new_agree": True,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {args.out}")
    return data


if __name__ == "__main__":
    main()
