"""Screening of site updates before aggregation: drop the ones that are broken.

A faulty site (diverged training, a half-written file, the wrong adapter config) sends
something that would poison every aggregation method at once: a single NaN makes the
average NaN, a key or shape mismatch makes it fail, and an update a hundred times larger
than the others swamps it. Each update is checked on its own against the current global
adapter, in this order (the first failure is the reason given):

1. keys: exactly the global's (missing / unexpected keys are named);
2. shapes: the global's, or with `lower_rank` a smaller LoRA rank for the factors
   (A (r, in), B (out, r)) as the egress check allows for sites of their own rank;
3. dtype: a floating type;
4. values: no NaN or Inf;
5. size: ‖state − global‖ (over the whole adapter) is not more than `norm_factor` times
   the median of the other remaining updates' norms. A median (not a mean) so that one
   huge update cannot raise the bar for itself or another; the *other* updates, so that
   an update is never compared with itself. Only applied with at least 3 updates left:
   with 2, each is "far above the other" as soon as one is, and nothing tells which one
   is the outlier. Not a defence against hostile sites (they can stay just under the
   bar, and a majority of large updates moves the median): see `robust` for that.

Nothing here raises for a bad update; `require_sites` turns "too few left" into an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedmedlora.federation.aggregation import State
from fedmedlora.federation.methods.lora_pairs import fits_shape

DEFAULT_NORM_FACTOR = 10.0
MIN_SITES_FOR_NORM_RULE = 3


class ScreeningSettings(BaseModel):
    """Faulty replies (NaN/Inf, wrong keys or shapes, an update norm far above the
    others') are left out of a round; the round goes on if enough remain."""

    model_config = ConfigDict(extra="forbid")

    norm_factor: float = Field(
        DEFAULT_NORM_FACTOR,
        gt=1,
        description="reject an update whose norm exceeds this x the others' median",
    )
    min_updates: int = Field(
        1, ge=1, description="accepted updates a round needs to aggregate (else skipped)"
    )


class NotEnoughSites(ValueError):
    """Fewer site updates survived screening than a round needs."""

    def __init__(self, message: str, *, accepted: int, min_sites: int) -> None:
        super().__init__(message)
        self.accepted = accepted
        self.min_sites = min_sites


@dataclass(frozen=True)
class Screened:
    """Outcome of `screen_updates`, indices into the given updates.

    `accepted`: in input order. `rejected`: {index: one-line reason}. `norms`: ‖state −
    global‖ per update (float64, whole adapter), NaN where it was not computed (rejected
    before the size check, or a lower-rank update, whose factors cannot be subtracted
    from the global's). `names`: the site names given.
    """

    accepted: list[int]
    rejected: dict[int, str]
    norms: list[float]
    names: list[str]

    def reasons(self) -> list[str]:
        """'site: reason' for each rejected update, in input order (for logs, reports)."""
        return [f"{self.names[i]}: {self.rejected[i]}" for i in sorted(self.rejected)]


def screen_updates(
    global_state: State,
    updates: Sequence[tuple[str, State]],
    *,
    lower_rank: bool = False,
    norm_factor: float = DEFAULT_NORM_FACTOR,
) -> Screened:
    """Check each (site_name, state) update against `global_state` (see the module doc).

    `lower_rank`: LoRA factors `*.lora_A.weight` (r, in) and `*.lora_B.weight` (out, r)
    may have a smaller r than the global's (sites of their own rank, `hetero_rank`).
    Such an update has no norm (its start point was a re-scaled SVD truncation, not a
    slice of the global, so a factor difference would measure the re-scaling rather than
    the training): it is neither size-checked nor counted in the others' medians.
    `norm_factor` > 1; math.inf turns the size check off. A median of 0 (the others did
    not move) gives no scale to compare with, so the size check is skipped then.

    Raises ValueError only for bad arguments (an empty or non-finite global adapter, a
    bad `norm_factor`), never for a bad update.
    """
    if not global_state:
        raise ValueError("the global adapter has no tensors")
    if math.isnan(norm_factor) or norm_factor <= 1:
        raise ValueError(f"norm_factor must be > 1 (math.inf disables it), got {norm_factor}")
    for key, g in global_state.items():
        if not torch.is_floating_point(g) or not bool(torch.isfinite(g).all()):
            raise ValueError(f"global adapter tensor {key!r} is not finite floating point")

    names = [name for name, _ in updates]
    rejected: dict[int, str] = {}
    norms = [math.nan] * len(updates)
    for i, (_, state) in enumerate(updates):
        reason = _structural_problem(global_state, state, lower_rank)
        if reason is not None:
            rejected[i] = reason
        elif all(state[k].shape == g.shape for k, g in global_state.items()):
            norms[i] = _delta_norm(global_state, state)

    sized = [i for i in range(len(updates)) if i not in rejected and not math.isnan(norms[i])]
    if len(sized) >= MIN_SITES_FOR_NORM_RULE and not math.isinf(norm_factor):
        for i in sized:
            med = _median([norms[j] for j in sized if j != i])
            if med > 0 and norms[i] > norm_factor * med:
                rejected[i] = (
                    f"update norm {norms[i]:.4g} is more than {norm_factor:g}x the median "
                    f"{med:.4g} of the other {len(sized) - 1} updates"
                )
    accepted = [i for i in range(len(updates)) if i not in rejected]
    return Screened(accepted, dict(sorted(rejected.items())), norms, names)


def require_sites(screened: Screened, min_sites: int) -> None:
    """Raise NotEnoughSites unless at least `min_sites` (≥ 1) updates were accepted; the
    message names every rejected site and why, so the round's failure explains itself."""
    if min_sites < 1:
        raise ValueError(f"min_sites must be >= 1, got {min_sites}")
    n = len(screened.accepted)
    if n >= min_sites:
        return
    total = len(screened.names)
    message = f"only {n} of {total} site updates accepted, at least {min_sites} required"
    if screened.rejected:
        message += "; rejected: " + "; ".join(screened.reasons())
    raise NotEnoughSites(message, accepted=n, min_sites=min_sites)


def _structural_problem(global_state: State, state: State, lower_rank: bool) -> str | None:
    """The first of: key, shape, dtype, NaN/Inf problems, as a one-line reason."""
    want, got = set(global_state), set(state)
    if want != got:
        parts = []
        if want - got:
            parts.append("missing " + _few(want - got))
        if got - want:
            parts.append("unexpected " + _few(got - want))
        return "keys differ from the global adapter's: " + ", ".join(parts)
    for key, g in global_state.items():
        shape, expected = tuple(state[key].shape), tuple(g.shape)
        if not fits_shape(key, shape, expected, lower_rank):
            hint = " (only the LoRA rank may be smaller)" if lower_rank else ""
            return f"{key}: shape {shape} does not fit the global's {expected}{hint}"
    for key in global_state:
        if not torch.is_floating_point(state[key]):
            return f"{key}: dtype {state[key].dtype} is not a floating type"
    bad: list[tuple[str, bool, bool]] = []  # (key, has NaN, has Inf)
    for key in global_state:
        t = state[key]
        if not bool(torch.isfinite(t).all()):
            bad.append((key, bool(torch.isnan(t).any()), bool(torch.isinf(t).any())))
    if bad:
        key, nan, inf = bad[0]
        what = " and ".join(w for w, has in (("NaN", nan), ("Inf", inf)) if has)
        more = f" (and {len(bad) - 1} more keys)" if len(bad) > 1 else ""
        return f"{what} in {key}{more}"
    return None


def _delta_norm(global_state: State, state: State) -> float:
    total = 0.0
    for key, g in global_state.items():
        g64 = g.to(torch.float64)
        total += float((state[key].to(device=g.device, dtype=torch.float64) - g64).square().sum())
    return math.sqrt(total)


def _median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def _few(keys: set[str], limit: int = 3) -> str:
    shown = sorted(keys)[:limit]
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return str(shown) + more
