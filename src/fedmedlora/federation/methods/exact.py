"""Product-exact LoRA aggregation: average the sites' updates ΔW_k = s_k·B_k·A_k, not
their factors.

Averaging A and B separately (Fed-MedLoRA) gives mean(B)·mean(A) ≠ mean(B·A): the
global model is not the average of the sites' models. Here the global factors are chosen
so that s·B·A equals Σ p_k s_k B_k A_k exactly (at full rank R = Σ r_k), or its best
rank-r approximation (Eckart–Young) when a smaller rank is asked for.

No out×in matrix is ever formed: with B_cat = [√c_1 B_1, …, √c_K B_K] (out×R) and
A_cat = [√c_1 A_1; …; √c_K A_K] (R×in), c_k = p_k s_k, ΔW = B_cat·A_cat. QR of B_cat and
of A_catᵀ reduces ΔW to a core of at most R×R, whose SVD gives ΔW's SVD. The cost is
O((out + in)·R² + R³) per module instead of O(out·in·R).

Dead directions: when the asked rank exceeds ΔW's numerical rank (an early round, sites
that sent zero updates, a site handed a larger rank than the global update has), the
spare B columns and A rows would both be zero. LoRA's gradient for B's column i is
proportional to A's row i and vice versa, so such a pair never trains again and the
adapter's rank collapses round after round. By default those A rows are refilled with
seeded directions orthogonal to the kept rows, at PEFT's initial row norm, with B's
columns kept exactly zero: the product is unchanged and every direction can learn again.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from fedmedlora.federation.aggregation import State, weighted_average
from fedmedlora.federation.methods.lora_pairs import LORA_B_BIAS_SUFFIX, pair_rank, split_lora

# PEFT initialises lora_A with kaiming_uniform(a=√5), i.e. U(-1/√in, 1/√in): row norm
# √(in · 1/(3·in)) = 1/√3 whatever in is. Refilled rows get that norm, so they start like
# a fresh adapter's directions.
FILL_ROW_NORM = 1.0 / math.sqrt(3.0)


class LoraFactors(NamedTuple):
    """One module's factors: `b` (out, r) and `a` (r, in), so that ΔW = s·b·a."""

    b: torch.Tensor
    a: torch.Tensor


def exact_factors(
    lora_b: Sequence[torch.Tensor],
    lora_a: Sequence[torch.Tensor],
    weights: Sequence[float],
    scalings: Sequence[float],
    *,
    target_rank: int | None = None,
    target_scaling: float = 1.0,
    fill_dead: bool = True,
    seed: int = 0,
) -> LoraFactors:
    """Factors (B, A) of one module with target_scaling·B·A = the best rank-r
    approximation of ΔW = Σ p_k s_k B_k A_k, p = weights / Σ weights.

    Site k gives B_k (out, r_k) and A_k (r_k, in); ranks may differ. With target_rank None
    the rank is R = Σ r_k and the result is exactly ΔW; it is also exact whenever
    rank(ΔW) ≤ target_rank. Singular values are split √S to each side, so B and A have
    equal norms. Directions beyond ΔW's numerical rank (see `_live_count`) get zero
    columns of B and, with `fill_dead`, fresh A rows orthogonal to the kept ones (seeded
    by the shapes and `seed`, so reproducible) so that they can still train; without it,
    zero rows (which LoRA training can never revive). Computed in float64; returned in the
    dtype and on the device of lora_b[0].
    """
    p = _normalised(weights)
    if not (len(lora_b) == len(lora_a) == len(p) == len(scalings)):
        raise ValueError(
            f"need one B, A, weight and scaling per site, got {len(lora_b)}, {len(lora_a)}, "
            f"{len(p)}, {len(scalings)}"
        )
    _check_scaling("scalings", scalings)
    _check_scaling("target_scaling", [target_scaling])
    out_dim, in_dim = lora_b[0].shape[0], lora_a[0].shape[-1]
    b_parts, a_parts = [], []
    for k, (b, a, pk, sk) in enumerate(zip(lora_b, lora_a, p, scalings, strict=True)):
        if b.dim() != 2 or a.dim() != 2 or b.shape[1] != a.shape[0]:
            raise ValueError(
                f"site {k}: expected B (out, r) and A (r, in), got {tuple(b.shape)} and "
                f"{tuple(a.shape)}"
            )
        if b.shape[0] != out_dim or a.shape[1] != in_dim:
            raise ValueError(
                f"site {k}: ΔW is {b.shape[0]}×{a.shape[1]}, site 0's is {out_dim}×{in_dim}"
            )
        root = math.sqrt(pk * sk)
        b_parts.append(b.to(torch.float64) * root)
        a_parts.append(a.to(torch.float64) * root)
    rank = sum(a.shape[0] for a in a_parts) if target_rank is None else target_rank
    if rank < 1:
        raise ValueError(f"target_rank must be >= 1, got {target_rank}")
    b_cat, a_cat = torch.cat(b_parts, dim=1), torch.cat(a_parts, dim=0)
    left, sing, right = _svd_of_product(b_cat, a_cat)
    dtype = lora_b[0].dtype
    if not fill_dead:
        b, a = _split(left, sing, right, rank, target_scaling)
        return LoraFactors(b.to(dtype), a.to(dtype))
    live = _live_count(sing, b_cat, a_cat, target_scaling, dtype)
    b, a = _split(left, sing[:live], right, rank, target_scaling)
    if live < rank:
        gen = torch.Generator().manual_seed(stable_seed("lora-fill", out_dim, in_dim, rank, seed))
        a[live:] = _fill_rows(right[:live], rank - live, gen)
    return LoraFactors(b.to(dtype), a.to(dtype))


def truncate(
    b: torch.Tensor,
    a: torch.Tensor,
    rank: int,
    *,
    scaling: float = 1.0,
    target_scaling: float | None = None,
    fill_dead: bool = True,
    seed: int = 0,
) -> LoraFactors:
    """The SVD-optimal rank-`rank` factors of scaling·B·A, for target_scaling (default:
    the same scaling). Used to hand a global adapter to a site of smaller rank, or to
    re-balance factors; a larger `rank` pads with zero B columns (and, with `fill_dead`,
    trainable A rows, see `exact_factors`), keeping the product exact."""
    return exact_factors(
        [b],
        [a],
        [1.0],
        [scaling],
        target_rank=rank,
        target_scaling=scaling if target_scaling is None else target_scaling,
        fill_dead=fill_dead,
        seed=seed,
    )


def exact_aggregate(
    states: Sequence[State],
    weights: Sequence[float],
    *,
    scalings: Sequence[float],
    target_rank: int | None = None,
    target_scaling: float,
    fill_dead: bool = True,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Aggregate whole adapter states: every LoRA pair by `exact_factors`, every other
    tensor by the plain weighted average (heads are linear in the model, so their average
    is exact too). `lora_B.bias` is scaled like its B (PEFT adds s·bias), so it becomes
    Σ p_k (s_k / target_scaling) bias_k.

    All sites must have the same keys; ranks may differ between sites (and modules).
    `scalings[k]` is site k's s (alpha/r_k, see `lora_scaling`); the result is meant for a
    PEFT config whose rank is target_rank (Σ r_k per module when None) and whose scaling
    is target_scaling. DoRA adapters are refused: their merge normalises W + s·B·A, so
    no factor choice makes the merged models average. Dead directions are refilled as in
    `exact_factors` (`fill_dead`), seeded by `seed` and the module's name, so that the
    layers of one shape do not all get the same fresh directions.
    """
    if not states:
        raise ValueError("nothing to aggregate")
    if len(states) != len(weights) or len(states) != len(scalings):
        raise ValueError(
            f"{len(states)} states but {len(weights)} weights and {len(scalings)} scalings"
        )
    _normalised(weights)
    _check_same_keys(states)
    dora = [k for k in states[0] if "lora_magnitude_vector" in k]
    if dora:
        raise ValueError(f"DoRA adapters cannot be aggregated exactly (e.g. {dora[0]!r})")
    split = split_lora(states[0])
    for k, s in enumerate(states):
        for a_key, b_key in split.pairs.values():
            try:
                pair_rank(s, a_key, b_key)
            except ValueError as err:
                raise ValueError(f"site {k}: {err}") from None
    _check_scaling("scalings", scalings)
    _check_scaling("target_scaling", [target_scaling])
    biases = [k for k in split.others if k.endswith(LORA_B_BIAS_SUFFIX)]
    plain = [k for k in split.others if not k.endswith(LORA_B_BIAS_SUFFIX)]

    result: dict[str, torch.Tensor] = {}
    if plain:
        result.update(weighted_average([{k: s[k] for k in plain} for s in states], weights))
    if biases:
        scaled = [
            {k: s[k].to(torch.float64) * (sk / target_scaling) for k in biases}
            for s, sk in zip(states, scalings, strict=True)
        ]
        averaged = weighted_average(scaled, weights)
        result.update({k: averaged[k].to(states[0][k].dtype) for k in biases})
    for module, (a_key, b_key) in split.pairs.items():
        factors = exact_factors(
            [s[b_key] for s in states],
            [s[a_key] for s in states],
            weights,
            scalings,
            target_rank=target_rank,
            target_scaling=target_scaling,
            fill_dead=fill_dead,
            seed=stable_seed(module, seed),
        )
        result[a_key], result[b_key] = factors.a, factors.b
    return {k: result[k] for k in states[0]}  # PEFT's key order, as the sites sent it


def _svd_of_product(
    b_cat: torch.Tensor, a_cat: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD U·diag(S)·Vh of b_cat @ a_cat (out×R times R×in) through QR of each side
    and an SVD of the ≤ R×R core; U (out, k), S (k,), Vh (k, in), k = min(out, in, R)."""
    q_b, r_b = torch.linalg.qr(b_cat)  # (out, m) (m, R)
    q_a, r_a = torch.linalg.qr(a_cat.T)  # (in, n) (n, R)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)  # the m×n core
    return q_b @ u, s, vh @ q_a.T


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from `parts`' text, the same in every process (unlike hash())."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def _split(
    left: torch.Tensor, sing: torch.Tensor, right: torch.Tensor, rank: int, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 (B, A) of rank `rank` from the leading singular triplets, √(S/s) to each
    side; rows/columns beyond len(sing) are zero."""
    keep = min(rank, sing.shape[0])
    root = torch.sqrt(sing[:keep] / scaling)
    b = left.new_zeros(left.shape[0], rank)
    a = right.new_zeros(rank, right.shape[1])
    b[:, :keep] = left[:, :keep] * root
    a[:keep] = root[:, None] * right[:keep]
    return b, a


def _live_count(
    sing: torch.Tensor,
    b_cat: torch.Tensor,
    a_cat: torch.Tensor,
    scaling: float,
    dtype: torch.dtype,
) -> int:
    """How many leading singular directions of B_cat·A_cat are real, not round-off.

    The float64 product is only known to about eps·dim·‖B_cat‖·‖A_cat‖ (QR and the core
    SVD are backward stable), so a σ below that is noise and its direction meaningless.
    The tolerance is relative to the factors' norms, not to σ_max, because when sites'
    updates cancel σ_max itself is noise. A σ whose factors √(σ/s) would underflow in
    the output dtype is dead too: it would arrive as zeros anyway. Dropping these changes
    the product by less than its own rounding error.
    """
    dims = max(b_cat.shape[0], a_cat.shape[1], b_cat.shape[1])
    scale = float(torch.linalg.matrix_norm(b_cat)) * float(torch.linalg.matrix_norm(a_cat))
    tol = dims * torch.finfo(torch.float64).eps * scale
    live = (sing > tol) & (torch.sqrt(sing / scaling) >= torch.finfo(dtype).tiny)
    return int(live.long().cumprod(0).sum())  # σ is sorted: the live ones lead


def _fill_rows(kept: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
    """`count` float64 rows of norm FILL_ROW_NORM, orthonormal (up to that norm) to each
    other and to the orthonormal rows `kept` (k, in), drawn from `gen`. Only in − k such
    directions exist; any further rows are random directions (fewer inputs than rank)."""
    in_dim = kept.shape[1]
    n_orth = min(count, max(in_dim - kept.shape[0], 0))
    draws = torch.randn(count, in_dim, generator=gen, dtype=torch.float64).to(kept.device)
    orth = draws[:n_orth]
    for _ in range(2):  # Gram–Schmidt twice: one pass can leave round-off along kept
        orth = orth - (orth @ kept.T) @ kept
    q, _ = torch.linalg.qr(orth.T)  # (in, n_orth): orthonormal, still ⟂ kept
    rest = draws[n_orth:]
    rest = rest / torch.linalg.vector_norm(rest, dim=1, keepdim=True)
    return torch.cat([q.T, rest]) * FILL_ROW_NORM


def _normalised(weights: Sequence[float]) -> list[float]:
    w = [float(x) for x in weights]
    if not w or not all(math.isfinite(x) and x >= 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"weights must be finite, non-negative with a positive sum, got {w}")
    total = math.fsum(w)
    return [x / total for x in w]


def _check_scaling(name: str, values: Sequence[float]) -> None:
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{name} must be finite and > 0, got {list(values)}")


def _check_same_keys(states: Sequence[State]) -> None:
    keys = set(states[0])
    for i, s in enumerate(states[1:], start=1):
        if set(s) != keys:
            diff = sorted(set(s) ^ keys)[:3]
            raise ValueError(f"state {i} has different keys from state 0 (e.g. {diff})")
