"""Bootstrap intervals of micro F1, resampling documents: one model's score, or the
paired difference of two models scored on the same documents.

Items are per-window (or per-document) [tp, fp, fn] counts; windows cut from one source
document are not independent, so counts are first summed per document (`groups`) and
documents are what is resampled. Several runs of a method (training seeds) on the same
documents are averaged: the statistic is the mean over runs of each run's micro F1,
computed on the same resample of documents for every run and both methods (the pairing).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedmedlora.evaluation.metrics import Scores

# The headline micro counts kept per document: (kind, mode).
COUNT_KEYS = (
    ("entity", "strict"),
    ("entity", "lenient"),
    ("relation", "strict"),
    ("relation", "lenient"),
)


def micro_counts(scores: Scores) -> list[int]:
    """[tp, fp, fn] of each COUNT_KEYS entry, flat (12 integers): what a document keeps."""
    out: list[int] = []
    for kind, mode in COUNT_KEYS:
        c = scores.micro(kind, mode)
        out += [c.tp, c.fp, c.fn]
    return out


def key_slice(kind: str, mode: str) -> slice:
    i = COUNT_KEYS.index((kind, mode))
    return slice(3 * i, 3 * i + 3)


def _f1(counts: np.ndarray) -> np.ndarray:
    """Micro F1 of [..., 3] counts (0 where there is nothing to score)."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def _grouped(runs: Sequence[Sequence[Sequence[int]]], groups: Sequence[str]) -> np.ndarray:
    """[runs, documents, 3] counts, summed over the items of each document."""
    arr = np.asarray(runs, dtype=np.int64)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected [runs, items, 3] counts, got shape {arr.shape}")
    if arr.shape[1] != len(groups):
        raise ValueError(f"{arr.shape[1]} items but {len(groups)} group labels")
    names = sorted(set(groups))
    index = {g: i for i, g in enumerate(names)}
    out = np.zeros((arr.shape[0], len(names), 3), dtype=np.int64)
    np.add.at(out, (slice(None), [index[g] for g in groups]), arr)
    return out


def _resamples(n_groups: int, n: int, seed: int) -> np.ndarray:
    """[n, groups] multiplicity of each document in each resample."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n_groups, size=(n, n_groups))
    weights = np.zeros((n, n_groups), dtype=np.int64)
    np.add.at(weights, (np.arange(n)[:, None], picks), 1)
    return weights


def _stat(grouped: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean over runs of micro F1, for each resample: [n]."""
    totals = np.einsum("ng,rgc->nrc", weights, grouped)
    return _f1(totals).mean(axis=1)


def _interval(values: np.ndarray) -> list[float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return [round(float(low), 4), round(float(high), 4)]


def bootstrap_f1(
    runs: Sequence[Sequence[Sequence[int]]],
    groups: Sequence[str],
    n: int = 2000,
    seed: int = 0,
) -> dict[str, object]:
    """Mean micro F1 over `runs` ([runs][items][tp, fp, fn]) and its 95% interval,
    resampling the documents named by `groups` (one label per item)."""
    grouped = _grouped(runs, groups)
    point = float(_f1(grouped.sum(axis=1)).mean())
    values = _stat(grouped, _resamples(grouped.shape[1], n, seed))
    return {"f1": round(point, 4), "ci95": _interval(values), "runs": grouped.shape[0]}


def paired_bootstrap(
    a: Sequence[Sequence[Sequence[int]]],
    b: Sequence[Sequence[Sequence[int]]],
    groups: Sequence[str],
    n: int = 2000,
    seed: int = 0,
) -> dict[str, object]:
    """F1(b) - F1(a) on the same documents, with its 95% interval: each resample of the
    documents is applied to both (their noise shared, so the interval is that of the
    difference, narrower than two separate intervals suggest). Each side may hold
    several runs (seeds), averaged."""
    ga, gb = _grouped(a, groups), _grouped(b, groups)
    weights = _resamples(ga.shape[1], n, seed)
    diffs = _stat(gb, weights) - _stat(ga, weights)
    fa, fb = float(_f1(ga.sum(axis=1)).mean()), float(_f1(gb.sum(axis=1)).mean())
    return {
        "a": round(fa, 4),
        "b": round(fb, 4),
        "difference": round(fb - fa, 4),
        "ci95": _interval(diffs),
        "share_b_better": round(float((diffs > 0).mean()), 3),
        "runs": [ga.shape[0], gb.shape[0]],
    }
