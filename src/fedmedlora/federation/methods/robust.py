"""Robust aggregation against hostile sites, over the sites' updates Δ_k = state_k − x.

A plain (weighted) mean lets one site move the global adapter anywhere: sending
x + c·Δ for a large c, or −c times the honest direction, pulls the mean by c/n of it.
The methods here bound what a minority of sites can do, at the cost of some efficiency
when every site is honest. All combine the updates and return x + combine(Δ):

- `median`: coordinate-wise median (Yin et al., ICML 2018). Tolerates any minority of
  attackers per coordinate; noisier than the mean when all sites are honest.
- `trimmed-mean`: coordinate-wise, drop the ⌊βn⌋ largest and ⌊βn⌋ smallest values, average
  the rest (Yin et al. 2018). Tolerates up to ⌊βn⌋ attackers; β = 0 is the plain mean.
- `multi-krum`: score each update by the sum of squared distances to its n − f − 2
  nearest other updates, average the m best-scoring (Blanchard et al., NeurIPS 2017;
  m = 1 is Krum). Needs n > 2f + 2 for f attackers. Whole updates are kept or dropped,
  so the selected ones keep their LoRA factor pairs intact.
- `norm-clip`: scale each Δ_k down to L2 norm ≤ τ, then the weighted mean (as in
  DP-FedAvg / Sun et al. 2019, "Can you really backdoor FL?"). τ given, or the median of
  the update norms. It does not reject anything: it bounds each site's pull to
  (w_k / Σw)·τ, so it stops scaled updates but only dampens sign flips.

Weights: `median` and `trimmed_mean` ignore them (unweighted, as analysed in Yin et
al.): example counts are the sites' own claims, and a hostile site would inflate its
count to win every coordinate. `multi_krum` averages the selected updates with their
weights (renormalised over the selection), `norm_clip` all clipped updates: a forged
weight then moves the result only within the selection, or by at most τ. The aggregator
also caps every weight at `federation.max_site_weight` (`aggregation.cap_weights`;
`multi_krum` again over its selection), since the counts are the sites' own claims.

Distances and norms are over the whole adapter (all keys, as one flat vector), the
coordinate-wise methods go key by key. All states must have the global's keys and
shapes (run `screening` first; lower-rank sites cannot be combined coordinate-wise) and
be finite. Float64 inside, each global tensor's dtype out; `info` holds plain Python
values (lists, floats) for logs and metrics.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from fedmedlora.federation.aggregation import State, cap_weights
from fedmedlora.federation.methods.base import Combined, Method, MethodSettings, Round, register

RobustMethod = Literal["median", "trimmed-mean", "multi-krum", "norm-clip"]
Deltas = list[dict[str, torch.Tensor]]


def robust_aggregate(
    global_state: State,
    states: Sequence[State],
    weights: Sequence[float],
    method: RobustMethod,
    **params: Any,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The new global x + combine(Δ_1..Δ_n) and an info dict, by `method`:

    - "median": no parameters.
    - "trimmed-mean": `beta` (0 ≤ β < 0.5), the fraction trimmed from each end.
    - "multi-krum": `f` (attackers tolerated, n > 2f + 2), `m` (how many to average,
      1 ≤ m ≤ n − f, default n − f).
    - "norm-clip": `max_norm` (τ > 0; default None: the median update norm).

    `info` always has "method" and "norms" (‖Δ_k‖ per site), plus the method's own:
    "trimmed_per_side"; "selected" (indices, best first) and "scores"; "max_norm" and
    "clip_factors" (min(1, τ/‖Δ_k‖)). Unknown methods or parameters raise ValueError.
    """
    if method in _OLD_NAMES:
        warnings.warn(
            f"robust method {method!r} is now spelt {_OLD_NAMES[method]!r}",
            DeprecationWarning,
            stacklevel=2,
        )
        method = _OLD_NAMES[method]
    if method not in _COMBINERS:
        raise ValueError(f"unknown robust method {method!r}; expected one of {list(_COMBINERS)}")
    combine = _COMBINERS[method]
    signature = inspect.signature(combine).parameters
    allowed = [p for p in signature if p not in ("deltas", "weights")]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"{method}: unknown parameters {unknown}; it takes {allowed or 'none'}")
    missing = [p for p in allowed if signature[p].default is inspect.Parameter.empty]
    if set(missing) - set(params):
        raise ValueError(f"{method}: missing required parameters {missing}")
    if not states:
        raise ValueError("nothing to aggregate")
    _check_weights(len(states), weights)
    deltas = updates(global_state, states)
    combined, info = combine(deltas, weights, **params)
    new_global = {
        key: (g.to(torch.float64) + combined[key].to(g.device)).to(g.dtype)
        for key, g in global_state.items()
    }
    return new_global, {"method": method, "norms": update_norms(deltas), **info}


def updates(global_state: State, states: Sequence[State]) -> Deltas:
    """Δ_k = state_k − global in float64, after checking keys, shapes and finiteness."""
    if not states:
        raise ValueError("nothing to aggregate")
    out: Deltas = []
    for i, state in enumerate(states):
        if set(state) != set(global_state):
            diff = sorted(set(state) ^ set(global_state))[:3]
            raise ValueError(f"state {i} has different keys from the global (e.g. {diff})")
        delta: dict[str, torch.Tensor] = {}
        for key, g in global_state.items():
            if not torch.is_floating_point(g):
                raise ValueError(f"global {key}: dtype {g.dtype} is not a floating type")
            t = state[key]
            if t.shape != g.shape:
                raise ValueError(f"state {i}, {key}: shape {tuple(t.shape)} != {tuple(g.shape)}")
            d = t.to(device=g.device, dtype=torch.float64) - g.to(torch.float64)
            if not bool(torch.isfinite(d).all()):
                raise ValueError(f"state {i}, {key}: non-finite values (screen updates first)")
            delta[key] = d
        out.append(delta)
    return out


def update_norms(deltas: Deltas) -> list[float]:
    """‖Δ_k‖ over the whole adapter (all keys as one vector)."""
    return [math.sqrt(sum(float(t.square().sum()) for t in d.values())) for d in deltas]


def coordinate_median(
    deltas: Deltas, weights: Sequence[float] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Coordinate-wise median (mean of the two middle values for even n); unweighted."""
    n = len(deltas)
    out: dict[str, torch.Tensor] = {}
    for key in deltas[0]:
        s = torch.stack([d[key] for d in deltas]).sort(dim=0).values
        out[key] = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    return out, {}


def trimmed_mean(
    deltas: Deltas, weights: Sequence[float] | None = None, *, beta: float
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Coordinate-wise mean after dropping k = ⌊βn⌋ values from each end; unweighted."""
    n = len(deltas)
    if not 0 <= beta < 0.5:
        raise ValueError(f"trimmed_mean: beta must be in [0, 0.5), got {beta}")
    k = math.floor(beta * n)
    if n - 2 * k < 1:  # cannot happen for beta < 0.5; kept as the invariant it relies on
        raise ValueError(f"trimmed_mean: trimming {k} of {n} from each end leaves nothing")
    out: dict[str, torch.Tensor] = {}
    for key in deltas[0]:
        s = torch.stack([d[key] for d in deltas]).sort(dim=0).values
        out[key] = s[k : n - k].mean(dim=0)
    return out, {"trimmed_per_side": k}


def krum_scores(deltas: Deltas, f: int) -> list[float]:
    """Blanchard et al.'s score: for each update, the sum of the squared distances to its
    n − f − 2 nearest other updates (whole adapter). Requires n > 2f + 2, f ≥ 0."""
    n = len(deltas)
    if f < 0 or n <= 2 * f + 2:
        raise ValueError(f"multi_krum needs f >= 0 and n > 2f + 2, got n={n}, f={f}")
    d2 = torch.zeros(n, n, dtype=torch.float64)
    for key in deltas[0]:
        x = torch.stack([d[key].reshape(-1) for d in deltas]).cpu()
        for i in range(n):  # explicit differences: no cancellation for close updates
            d2[i] += (x - x[i]).square().sum(dim=1)
    d2.fill_diagonal_(math.inf)  # an update is not its own neighbour
    nearest = d2.sort(dim=1).values[:, : n - f - 2]
    return [float(s) for s in nearest.sum(dim=1)]


def multi_krum(
    deltas: Deltas,
    weights: Sequence[float],
    *,
    f: int,
    m: int | None = None,
    max_weight: float = 1.0,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weighted mean of the m updates with the lowest Krum scores (ties: lower index),
    their weights renormalised over the selection and capped at `max_weight`
    (`aggregation.cap_weights`)."""
    n = len(deltas)
    scores = krum_scores(deltas, f)
    m = n - f if m is None else m
    if not 1 <= m <= n - f:
        raise ValueError(f"multi_krum: m must be in [1, n - f] = [1, {n - f}], got {m}")
    order = sorted(range(n), key=lambda i: (scores[i], i))
    selected = order[:m]
    if float(sum(weights[i] for i in selected)) <= 0:
        raise ValueError(f"multi_krum: the selected updates {selected} all have weight 0")
    share = cap_weights([weights[i] for i in selected], max_weight)
    out = {
        key: sum(deltas[i][key] * w for i, w in zip(selected, share, strict=True))
        for key in deltas[0]
    }
    return out, {"selected": selected, "scores": scores, "selected_weights": share}


def norm_clipped_mean(
    deltas: Deltas, weights: Sequence[float], *, max_norm: float | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weighted mean of the updates, each first scaled to L2 norm ≤ τ (whole adapter);
    τ = `max_norm`, or the (unweighted) median update norm when None."""
    norms = update_norms(deltas)
    if max_norm is None:
        s, mid = sorted(norms), len(norms) // 2
        tau = s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
    else:
        if not (max_norm > 0 and math.isfinite(max_norm)):
            raise ValueError(f"norm_clip: max_norm must be positive and finite, got {max_norm}")
        tau = float(max_norm)
    factors = [1.0 if nrm <= tau else tau / nrm for nrm in norms]
    total = float(sum(weights))
    out = {
        key: sum(d[key] * (c * w / total) for d, c, w in zip(deltas, factors, weights, strict=True))
        for key in deltas[0]
    }
    return out, {"max_norm": tau, "clip_factors": factors}


def _check_weights(n: int, weights: Sequence[float]) -> None:
    if len(weights) != n:
        raise ValueError(f"{n} states but {len(weights)} weights")
    if any(not (w >= 0 and math.isfinite(w)) for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be finite, non-negative, with a positive sum: {weights}")


_COMBINERS: dict[str, Callable[..., tuple[dict[str, torch.Tensor], dict[str, Any]]]] = {
    "median": coordinate_median,
    "trimmed-mean": trimmed_mean,
    "multi-krum": multi_krum,
    "norm-clip": norm_clipped_mean,
}
_OLD_NAMES = {"trimmed_mean": "trimmed-mean", "multi_krum": "multi-krum", "norm_clip": "norm-clip"}


class MedianSettings(MethodSettings):
    method: Literal["median"] = "median"


class TrimmedMeanSettings(MethodSettings):
    method: Literal["trimmed-mean"] = "trimmed-mean"
    trim_fraction: float = Field(0.2, ge=0, lt=0.5, description="per end")


class MultiKrumSettings(MethodSettings):
    method: Literal["multi-krum"] = "multi-krum"
    krum_f: int = Field(1, ge=0, description="hostile sites tolerated")
    krum_m: int | None = Field(None, ge=1, description="updates averaged")

    def site_problems(self, n_sites: int) -> list[tuple[str, str]]:
        problems = []
        if n_sites <= 2 * self.krum_f + 2:
            problems.append((
                "krum_f",
                f"multi-krum with krum_f={self.krum_f} needs more than "
                f"{2 * self.krum_f + 2} sites, {n_sites} configured",
            ))  # fmt: skip
        if self.krum_m is not None and self.krum_m > n_sites:
            problems.append(
                (
                    "krum_m",
                    f"averages {self.krum_m} updates but only {n_sites} sites are configured",
                )
            )
        return problems


class NormClipSettings(MethodSettings):
    method: Literal["norm-clip"] = "norm-clip"
    max_norm: float | None = Field(
        None, gt=0, description="L2 bound per update (default: median norm)"
    )

    @model_validator(mode="before")
    @classmethod
    def _old_key(cls, raw: Any) -> Any:
        """`clip_norm` was this bound's name, and also DP's: accepted, with a warning."""
        if isinstance(raw, dict) and "clip_norm" in raw:
            warnings.warn(
                "federation.aggregation.clip_norm is now max_norm (clip_norm stays "
                "federation.privacy's DP bound)",
                FutureWarning,
                stacklevel=2,
            )
            raw = dict(raw)
            old = raw.pop("clip_norm")
            if "max_norm" in raw:
                raise ValueError("give max_norm only (clip_norm is its old name)")
            raw["max_norm"] = old
        return raw


class Robust(Method):
    """Combine the updates against hostile sites by `robust_aggregate`."""

    def params(self, rnd: Round) -> dict[str, Any]:
        return {}

    def combine(self, rnd: Round) -> Combined:
        out, info = robust_aggregate(
            rnd.current, rnd.states, rnd.weights, self.name, **self.params(rnd)
        )
        n = len(rnd.states)
        if "selected" in info:  # multi-krum: only the selected sites count
            chosen = dict(zip(info["selected"], info["selected_weights"], strict=True))
            return Combined(out, [chosen.get(i, 0.0) for i in range(n)])
        if self.equal_weights:  # every site counts alike
            return Combined(out, [1 / n] * n)
        return Combined(out)

    equal_weights: bool = False


@register
class Median(Robust):
    name = "median"
    settings_model = MedianSettings
    summary = "coordinate-wise median of the updates (unweighted)"
    equal_weights = True


@register
class TrimmedMean(Robust):
    name = "trimmed-mean"
    settings_model = TrimmedMeanSettings
    summary = "coordinate-wise mean without the trim_fraction largest and smallest"
    equal_weights = True

    def params(self, rnd: Round) -> dict[str, Any]:
        return {"beta": self.settings.trim_fraction}


@register
class MultiKrum(Robust):
    name = "multi-krum"
    settings_model = MultiKrumSettings
    summary = "weighted mean of the krum_m updates closest to the others"

    def params(self, rnd: Round) -> dict[str, Any]:
        s = self.settings
        averaged = s.krum_m or len(rnd.states) - s.krum_f  # the cap holds among them too
        return {"f": s.krum_f, "m": s.krum_m, "max_weight": rnd.cap(averaged)}


@register
class NormClip(Robust):
    name = "norm-clip"
    settings_model = NormClipSettings
    summary = "weighted mean of the updates clipped to max_norm"

    def params(self, rnd: Round) -> dict[str, Any]:
        return {"max_norm": self.settings.max_norm}
