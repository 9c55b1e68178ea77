"""Heterogeneous ranks: each site trains a LoRA of its own rank r_k (what its hardware
allows); the server keeps one global adapter at the largest rank.

Factor averaging cannot even be written down for different shapes; the product-exact
aggregate can (it only needs the products B_k·A_k, which all have the module's shape),
and each site then gets the SVD-optimal truncation of the global adapter to its rank.
Each site's scaling alpha/r_k is accounted for, so sites that share alpha but not r
still contribute their true updates. A site whose rank exceeds the global update's
numerical rank gets its spare directions as zero B columns with fresh, trainable A rows
(see `exact`), so that its extra capacity is not dead on arrival.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch

from fedmedlora.federation.aggregation import State
from fedmedlora.federation.methods.base import Combined, Method, MethodSettings, Round, register
from fedmedlora.federation.methods.exact import exact_aggregate, stable_seed, truncate
from fedmedlora.federation.methods.lora_pairs import (
    LORA_B_BIAS_SUFFIX,
    lora_ranks,
    lora_scaling,
    split_lora,
)

if TYPE_CHECKING:
    from fedmedlora.recipe.site_recipe import SiteRecipe


def site_rank(state: State) -> int:
    """The one LoRA rank of a site's adapter; refuses a state with no pairs or with
    modules of different ranks (one scaling per site could not describe it)."""
    ranks = set(lora_ranks(state).values())
    if len(ranks) != 1:
        raise ValueError(f"expected one LoRA rank for all modules, got {sorted(ranks)}")
    return ranks.pop()


def hetero_aggregate(
    states: Sequence[State],
    weights: Sequence[float],
    *,
    alpha: float | None = None,
    rslora: bool = False,
    scalings: Sequence[float] | None = None,
    global_rank: int | None = None,
    global_scaling: float | None = None,
    fill_dead: bool = True,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """The global adapter from sites of different ranks, by `exact_aggregate`.

    Give either `alpha` (shared by all sites: s_k = alpha/r_k, or alpha/√r_k with rsLoRA)
    or explicit per-site `scalings`. The global rank defaults to the largest site rank,
    its scaling to that rank's alpha scaling (required with explicit `scalings`). The
    result is exact when the sites' summed update has rank ≤ global_rank, else its best
    approximation of that rank. `fill_dead` and `seed`: see `exact_aggregate`.
    """
    if not states:
        raise ValueError("nothing to aggregate")
    if (alpha is None) == (scalings is None):
        raise ValueError("give exactly one of alpha (shared) or scalings (per site)")
    ranks = [site_rank(s) for s in states]
    rank = max(ranks) if global_rank is None else global_rank
    if alpha is not None:
        scalings = [lora_scaling(alpha, r, rslora=rslora) for r in ranks]
        if global_scaling is None:
            global_scaling = lora_scaling(alpha, rank, rslora=rslora)
    if global_scaling is None:
        raise ValueError("global_scaling is required with explicit scalings")
    return exact_aggregate(
        states,
        weights,
        scalings=scalings,
        target_rank=rank,
        target_scaling=global_scaling,
        fill_dead=fill_dead,
        seed=seed,
    )


def redistribute(
    global_state: State,
    rank: int,
    target_scaling: float,
    *,
    global_scaling: float,
    fill_dead: bool = True,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """The global adapter for a site of rank `rank` and scaling `target_scaling`: each
    pair truncated (SVD-optimal) so that target_scaling·B·A approximates
    global_scaling·B_g·A_g, exactly when that product has rank ≤ `rank`. lora_B.bias is
    rescaled likewise; other tensors are copied unchanged. Directions beyond the
    product's numerical rank get zero B columns and, with `fill_dead`, fresh A rows
    (seeded by `seed` and the module's name) so that the site can train them."""
    split = split_lora(global_state)
    out: dict[str, torch.Tensor] = {}
    for key in split.others:
        value = global_state[key]
        if key.endswith(LORA_B_BIAS_SUFFIX):
            value = (value.to(torch.float64) * (global_scaling / target_scaling)).to(value.dtype)
        out[key] = value.clone()
    for module, (a_key, b_key) in split.pairs.items():
        factors = truncate(
            global_state[b_key],
            global_state[a_key],
            rank,
            scaling=global_scaling,
            target_scaling=target_scaling,
            fill_dead=fill_dead,
            seed=stable_seed(module, seed),
        )
        out[a_key], out[b_key] = factors.a, factors.b
    return {k: out[k] for k in global_state}


def fit_rank(site: SiteRecipe, state: dict) -> dict:
    """`state` in this site's shapes: a site of its own, lower rank gets the global
    adapter's SVD-optimal truncation to that rank (`redistribute`)."""
    initial = site.lm.initial
    if all(k in initial and state[k].shape == initial[k].shape for k in state):
        return state
    alpha, rank = site.recipe.lora.alpha, site.recipe.lora.rank
    return redistribute(
        state,
        rank,
        lora_scaling(alpha, rank),
        global_scaling=lora_scaling(alpha, site_rank(state)),
    )


class ExactSettings(MethodSettings):
    method: Literal["exact"] = "exact"


@register
class Exact(Method):
    name = "exact"
    settings_model = ExactSettings
    summary = "best rank-r factors of sum_k p_k s_k B_k A_k (QR + SVD); sites may train lower ranks"
    lower_rank = True

    def combine(self, rnd: Round) -> Combined:
        return Combined(
            hetero_aggregate(
                rnd.states,
                rnd.weights,
                alpha=self.lora.alpha,
                global_rank=self.lora.rank,
                global_scaling=lora_scaling(self.lora.alpha, self.lora.rank),
                seed=rnd.number,
            )
        )
