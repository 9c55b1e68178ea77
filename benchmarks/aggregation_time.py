"""Server aggregation time for Llama-3-8B LoRA adapters: product-exact vs dense SVD.

Product-exact is `exact_factors` (QR of the stacked factors + an SVD of the ≤ R×R core,
no out×in matrix); the dense baseline is what anyone would write (form
ΔW = Σ p_k s B_k A_k, full SVD, keep rank r); optionally also a randomized dense one
(torch.svd_lowrank on the same ΔW).

    nice .venv/bin/python benchmarks/aggregation_time.py [--layers 1] [--sites 10] [--rank 16]

Every Llama layer has the same seven projection shapes, so the aggregation cost is the
same per layer: only `--layers` layers are timed (the dense SVDs take minutes on a small
CPU) and the full 32-layer time is extrapolated linearly, which the output says. Times
are measured side by side in one run, matrix by matrix; compare the ratios, not the
absolute numbers, on a busy machine. `--scale N` divides every dimension by N (`--tiny`
is --scale 64) for a smoke test. Prints a table and writes JSON (default
benchmarks/results/aggregation_time.json).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fedmedlora.federation.methods.exact import LoraFactors, exact_factors

# Llama-3-8B: hidden 4096, intermediate 14336, 32 heads and 8 KV heads of dim 128.
HIDDEN, INTERMEDIATE, KV = 4096, 14336, 8 * 128
FULL_LAYERS = 32
# projection: (in_features, out_features), as nn.Linear(in, out)
PROJECTIONS: dict[str, tuple[int, int]] = {
    "q_proj": (HIDDEN, HIDDEN),
    "k_proj": (HIDDEN, KV),
    "v_proj": (HIDDEN, KV),
    "o_proj": (HIDDEN, HIDDEN),
    "gate_proj": (HIDDEN, INTERMEDIATE),
    "up_proj": (HIDDEN, INTERMEDIATE),
    "down_proj": (INTERMEDIATE, HIDDEN),
}
F64 = 8  # bytes
Aggregator = Callable[[list[torch.Tensor], list[torch.Tensor], list[float], float, int], Any]


def site_factors(
    out_dim: int, in_dim: int, rank: int, sites: int, seed: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Random float32 (B_k, A_k) per site: A at PEFT's init scale, B small and dense, so
    that ΔW has full rank min(out, in, sites·rank) like a trained federation's."""
    g = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(in_dim)
    bs = [torch.randn(out_dim, rank, generator=g) * 0.02 for _ in range(sites)]
    as_ = [(torch.rand(rank, in_dim, generator=g) * 2 - 1) * bound for _ in range(sites)]
    return bs, as_


def exact(bs, as_, p: list[float], scaling: float, rank: int) -> LoraFactors:
    return exact_factors(bs, as_, p, [scaling] * len(bs), target_rank=rank, target_scaling=scaling)


def _dense_delta(bs, as_, p: list[float], scaling: float) -> torch.Tensor:
    """ΔW in float64, as the dense baseline forms it (out×in: the cost to avoid)."""
    delta = torch.zeros(bs[0].shape[0], as_[0].shape[1], dtype=torch.float64)
    for b, a, pk in zip(bs, as_, p, strict=True):
        delta.addmm_(b.double(), a.double(), alpha=pk * scaling)
    return delta


def _factors(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int, scaling: float):
    root = torch.sqrt(s[:rank] / scaling)
    return LoraFactors((u[:, :rank] * root).float(), (root[:, None] * vh[:rank]).float())


def dense_svd(bs, as_, p: list[float], scaling: float, rank: int) -> LoraFactors:
    """The baseline: dense ΔW, its (thin but complete) SVD, the top `rank` triplets."""
    u, s, vh = torch.linalg.svd(_dense_delta(bs, as_, p, scaling), full_matrices=False)
    return _factors(u, s, vh, rank, scaling)


def dense_lowrank(
    bs, as_, p: list[float], scaling: float, rank: int, oversample: int = 10, niter: int = 2
) -> LoraFactors:
    """A fairer dense baseline: the same ΔW, randomized SVD (Halko et al.) of rank
    rank + oversample with `niter` subspace iterations (torch's default 2); approximate, so
    its error is reported too. Seeded for repeatability."""
    delta = _dense_delta(bs, as_, p, scaling)
    torch.manual_seed(0)
    u, s, v = torch.svd_lowrank(delta, q=min(rank + oversample, *delta.shape), niter=niter)
    return _factors(u, s, v.T, rank, scaling)


def methods_for(args: argparse.Namespace) -> dict[str, Aggregator]:
    methods: dict[str, Aggregator] = {"exact": exact, "dense_svd": dense_svd}
    if not args.no_lowrank:
        methods["dense_svd_lowrank"] = functools.partial(
            dense_lowrank, oversample=args.lowrank_oversample, niter=args.lowrank_niter
        )
    return methods


def memory_bytes(out_dim: int, in_dim: int, rank: int, sites: int) -> dict[str, int]:
    """Analytic size of each method's largest float64 temporaries (LAPACK workspace not
    counted): dense holds ΔW (out×in) and its U, Vh; exact the stacked factors and their Q
    (max(out, in)×R) and the ≤ R×R core, R = sites·rank."""
    big_r, k = sites * rank, min(out_dim, in_dim)
    core = min(out_dim, big_r) * min(in_dim, big_r)
    return {
        "dense_delta": out_dim * in_dim * F64,
        "dense_svd_outputs": (out_dim * k + k * in_dim) * F64,
        "exact_largest": max(out_dim, in_dim) * big_r * F64,
        "exact_core": core * F64,
    }


def check_errors(
    results: dict[str, LoraFactors], bs, as_, p: list[float], scaling: float
) -> dict[str, float]:
    """How each method's rank-r product s·B·A compares with the dense SVD's (the
    Eckart–Young optimum, unique for generic data): its relative Frobenius distance, and
    its excess truncation error (‖ΔW − s·B·A‖ − ‖ΔW − optimum‖) / ‖ΔW‖ (0: as good as the
    optimum; a randomized SVD can be far from the optimum's factors yet nearly as good
    where singular values are close). Dense, so only run on one layer."""
    delta = _dense_delta(bs, as_, p, scaling)
    products = {m: scaling * (f.b.double() @ f.a.double()) for m, f in results.items()}
    best, norm = products["dense_svd"], float(delta.norm())
    best_err = float((delta - best).norm())
    out: dict[str, float] = {}
    for m, prod in products.items():
        if m != "dense_svd":
            out[f"rel_err_{m}_vs_dense_svd"] = float((prod - best).norm() / best.norm())
            out[f"excess_trunc_err_{m}"] = (float((delta - prod).norm()) - best_err) / norm
    return out


def _timed(fn: Aggregator, args: tuple, repeats: int) -> tuple[float, LoraFactors]:
    times, result = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - began)
    return statistics.median(times), result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=1, help="layers timed (of 32)")
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--repeats", type=int, default=1, help="median of this many runs")
    ap.add_argument("--scale", type=int, default=1, help="divide every dimension by this")
    ap.add_argument("--tiny", action="store_true", help="--scale 64: a seconds-long smoke test")
    ap.add_argument("--no-lowrank", action="store_true", help="skip torch.svd_lowrank")
    ap.add_argument("--lowrank-oversample", type=int, default=10)
    ap.add_argument("--lowrank-niter", type=int, default=2, help="subspace iterations")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/aggregation_time.json")
    args = ap.parse_args(argv)
    if args.tiny:
        args.scale = 64
    if min(args.layers, args.sites, args.rank, args.repeats, args.scale) < 1:
        ap.error("--layers, --sites, --rank, --repeats and --scale must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = {
        name: (max(out_dim // args.scale, 1), max(in_dim // args.scale, 1))
        for name, (in_dim, out_dim) in PROJECTIONS.items()
    }
    methods = methods_for(args)
    scaling = args.alpha / args.rank
    p = [1.0 / args.sites] * args.sites  # weights do not change the cost

    warm = site_factors(64, 64, 8, 2, seed=-1)  # load LAPACK & co. before the clock runs
    for fn in methods.values():
        fn(*warm, [0.5, 0.5], 1.0, 8)

    seconds = {m: dict.fromkeys(shapes, 0.0) for m in methods}
    check: dict[str, dict[str, float]] = {}
    print(
        f"aggregating {args.sites} sites, rank {args.rank}, {len(shapes)} projections x "
        f"{args.layers} of {FULL_LAYERS} layers (scale 1/{args.scale}), "
        f"{torch.get_num_threads()} threads"
    )
    for layer in range(args.layers):
        for i, (name, (out_dim, in_dim)) in enumerate(shapes.items()):
            seed = args.seed * 1_000_003 + layer * len(shapes) + i
            call = (*site_factors(out_dim, in_dim, args.rank, args.sites, seed), p, scaling)
            results, took = {}, {}
            for m, fn in methods.items():
                took[m], results[m] = _timed(fn, (*call, args.rank), args.repeats)
                seconds[m][name] += took[m]
            print(
                f"  layer {layer} {name:9s} {out_dim}x{in_dim}: "
                + ", ".join(f"{m} {t:.3f} s" for m, t in took.items()),
                flush=True,
            )
            if layer == 0:  # same shapes in every layer: check the first one
                check[name] = check_errors(results, *call)

    totals = {m: sum(v.values()) for m, v in seconds.items()}
    factor = FULL_LAYERS / args.layers
    result: dict[str, Any] = {
        "benchmark": "aggregation_time",
        "model": "llama-3-8b" if args.scale == 1 else f"llama-3-8b shapes / {args.scale}",
        "shapes_out_in": {k: list(v) for k, v in shapes.items()},
        "sites": args.sites,
        "rank": args.rank,
        "scaling": scaling,
        "input_dtype": "float32",
        "layers_timed": args.layers,
        "layers_full_model": FULL_LAYERS,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "methods": list(methods),
        "lowrank": None
        if args.no_lowrank
        else {"oversample": args.lowrank_oversample, "niter": args.lowrank_niter},
        "seconds_by_projection": seconds,
        "seconds_timed_layers": totals,
        "seconds_full_model_extrapolated": {m: t * factor for m, t in totals.items()},
        "extrapolation": (
            f"linear: x{factor:g} ({args.layers} of {FULL_LAYERS} layers timed; every "
            "layer has the same shapes, so the same cost)"
        ),
        "ratio_over_exact": {m: totals[m] / totals["exact"] for m in methods},
        "ratio_over_exact_by_projection": {
            m: {k: seconds[m][k] / seconds["exact"][k] for k in shapes} for m in methods
        },
        "memory_bytes_analytic": {
            k: memory_bytes(o, i, args.rank, args.sites) for k, (o, i) in shapes.items()
        },
        "check_layer0": check,
    }
    print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


def print_table(r: dict[str, Any]) -> None:
    methods, mib = r["methods"], 2.0**20
    print(f"\nseconds over {r['layers_timed']} layer(s), ratio to exact, float64 temporaries (MiB)")
    head = f"{'projection':10s} {'out x in':>12s}"
    head += "".join(f" {m:>18s}" for m in methods)
    head += f" {'dense ΔW':>9s} {'exact Q':>8s} {'core':>6s}  rel.err vs dense_svd (excess)"
    print(head)
    for name, (o, i) in r["shapes_out_in"].items():
        row = f"{name:10s} {f'{o}x{i}':>12s}"
        for m in methods:
            s = r["seconds_by_projection"][m][name]
            row += f" {s:9.3f} ({r['ratio_over_exact_by_projection'][m][name]:5.1f}x)"
        mem = r["memory_bytes_analytic"][name]
        row += f" {mem['dense_delta'] / mib:9.1f} {mem['exact_largest'] / mib:8.1f}"
        row += f" {mem['exact_core'] / mib:6.2f}"
        errs = r["check_layer0"][name]
        row += "  " + ", ".join(
            f"{m} {errs[f'rel_err_{m}_vs_dense_svd']:.1e} ({errs[f'excess_trunc_err_{m}']:+.1e})"
            for m in methods
            if m != "dense_svd"
        )
        print(row)
    total = f"{'total':10s} {'':>12s}"
    for m in methods:
        total += f" {r['seconds_timed_layers'][m]:9.3f} ({r['ratio_over_exact'][m]:5.1f}x)"
    print(total)
    print(
        f"full model ({r['layers_full_model']} layers, extrapolated {r['extrapolation']}): "
        + ", ".join(f"{m} {s:.1f} s" for m, s in r["seconds_full_model_extrapolated"].items())
    )


if __name__ == "__main__":
    main()
