"""Server optimisers on the aggregated update (Reddi et al., "Adaptive Federated
Optimization", ICLR 2021).

The aggregate minus the current global adapter is a pseudo-gradient Δ (a descent
direction, as the sites' averaged progress); instead of jumping to the aggregate
(x + Δ, plain FedAvg), the server takes an optimiser step along Δ with momentum
(FedAvgM) or adaptive per-coordinate step sizes (FedAdam, FedYogi), which helps when
sites' data differ and their updates are noisy. Apply it to a fixed parametrisation
(factor averaging, FFA, FedSA): factors re-derived by an SVD each round (`exact`,
`hetero_rank`) change basis and sign between rounds, so momentum over them is
meaningless.

The optimiser state is a flat dict of tensors ("m/<key>", "v/<key>", "step") so that it
checkpoints with torch.save or safetensors beside the adapter.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedmedlora.federation.aggregation import State
from fedmedlora.federation.methods.base import Averaging, MethodSettings, register

OptState = dict[str, torch.Tensor]


class ServerOptSettings(BaseModel):
    """Server optimiser and its hyper-parameters (names as in Reddi et al.).

    `lr` (η) has no default: good values differ by orders of magnitude between FedAvgM
    (1.0 is FedAvg) and the adaptive methods (whose steps are ~η per coordinate).
    `initial_v` None means τ², the paper's v_{-1}; `bias_correction` applies Adam's
    √(1-β2^t)/(1-β1^t) factor to η, as Flower's FedAdam does (the paper does not).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["fedavgm", "fedadam", "fedyogi"]
    lr: float = Field(gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)  # β of FedAvgM
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0)
    initial_v: float | None = Field(None, ge=0)
    bias_correction: bool = False


def step(
    global_state: State,
    aggregated_state: State,
    opt_state: OptState,
    settings: ServerOptSettings,
) -> tuple[dict[str, torch.Tensor], OptState]:
    """One server round: Δ = aggregated − global, then

    - fedavgm: m = β·m + Δ;                               x ← x + η·m
    - fedadam: m = β1·m + (1−β1)·Δ; v = β2·v + (1−β2)·Δ²;  x ← x + η·m / (√v + τ)
    - fedyogi: as fedadam but v = v − (1−β2)·Δ²·sign(v − Δ²)

    `opt_state` is {} before the first round. Nothing is modified in place; computed in
    float64, returned in each global tensor's dtype. With fedavgm, η = 1 and β = 0 the
    new global is the aggregate itself.
    """
    if set(global_state) != set(aggregated_state):
        diff = sorted(set(global_state) ^ set(aggregated_state))[:3]
        raise ValueError(f"aggregate and global adapter have different keys (e.g. {diff})")
    adaptive = settings.method != "fedavgm"
    _check_opt_state(global_state, opt_state, adaptive)
    t = int(opt_state["step"]) + 1 if opt_state else 1
    lr = settings.lr
    if adaptive and settings.bias_correction:
        lr *= math.sqrt(1 - settings.beta2**t) / (1 - settings.beta1**t)
    v0 = settings.tau**2 if settings.initial_v is None else settings.initial_v

    new_global: dict[str, torch.Tensor] = {}
    new_state: OptState = {"step": torch.tensor(t, dtype=torch.int64)}
    for key, g in global_state.items():
        agg = aggregated_state[key]
        if agg.shape != g.shape:
            raise ValueError(f"{key}: aggregate shape {tuple(agg.shape)} != {tuple(g.shape)}")
        x = g.to(torch.float64)
        delta = agg.to(device=g.device, dtype=torch.float64) - x
        m = _moment(opt_state, "m/" + key, x, 0.0)
        if not adaptive:
            m = settings.momentum * m + delta
            x = x + lr * m
        else:
            m = settings.beta1 * m + (1 - settings.beta1) * delta
            v = _moment(opt_state, "v/" + key, x, v0)
            sq = delta.square()
            if settings.method == "fedadam":
                v = settings.beta2 * v + (1 - settings.beta2) * sq
            else:
                v = v - (1 - settings.beta2) * sq * torch.sign(v - sq)
            x = x + lr * m / (v.sqrt() + settings.tau)
            new_state["v/" + key] = v.to(g.dtype)
        new_state["m/" + key] = m.to(g.dtype)
        new_global[key] = x.to(g.dtype)
    return new_global, new_state


def _moment(opt_state: OptState, name: str, like: torch.Tensor, init: float) -> torch.Tensor:
    if name in opt_state:
        return opt_state[name].to(device=like.device, dtype=torch.float64)
    return torch.full_like(like, init)


def _check_opt_state(global_state: State, opt_state: OptState, adaptive: bool) -> None:
    """A saved state must describe exactly this adapter and method: silently restarting
    the moments of some tensors (after a rank change, say) would be a hidden bug."""
    if not opt_state:
        return
    expected = {"step"} | {"m/" + k for k in global_state}
    if adaptive:
        expected |= {"v/" + k for k in global_state}
    if set(opt_state) != expected:
        diff = sorted(set(opt_state) ^ expected)[:3]
        raise ValueError(f"optimiser state does not fit this adapter and method (e.g. {diff})")
    for name, value in opt_state.items():
        if name != "step" and value.shape != global_state[name[2:]].shape:
            raise ValueError(f"optimiser state {name!r} has shape {tuple(value.shape)}")


class _ServerOptMethodSettings(MethodSettings):
    server_lr: float | None = Field(None, gt=0, description="default: 1.0 FedAvgM, 0.01 Adam/Yogi")


class FedAvgMSettings(_ServerOptMethodSettings):
    method: Literal["fedavgm"] = "fedavgm"
    server_momentum: float = Field(0.9, ge=0, lt=1)


class _AdaptiveSettings(_ServerOptMethodSettings):
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0)


class FedAdamSettings(_AdaptiveSettings):
    method: Literal["fedadam"] = "fedadam"


class FedYogiSettings(_AdaptiveSettings):
    method: Literal["fedyogi"] = "fedyogi"


class _ServerOptimizer(Averaging):
    """The average (or DP's), then a server optimizer's step along it."""

    default_lr: ClassVar[float]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        s = self.settings
        self.optimizer = ServerOptSettings(
            method=self.name,
            lr=s.server_lr or self.default_lr,
            momentum=getattr(s, "server_momentum", 0.9),
            beta1=getattr(s, "beta1", 0.9),
            beta2=getattr(s, "beta2", 0.99),
            tau=getattr(s, "tau", 1e-3),
        )
        self.opt_state: OptState = {}

    def after_average(self, current: State, averaged: dict) -> dict[str, torch.Tensor]:
        out, self.opt_state = step(current, averaged, self.opt_state, self.optimizer)
        return out

    def state(self) -> dict[str, Any]:
        return {"opt_state": self.opt_state}

    def load_state(self, state: dict[str, Any]) -> None:
        self.opt_state = state["opt_state"]


@register
class FedAvgM(_ServerOptimizer):
    name = "fedavgm"
    settings_model = FedAvgMSettings
    summary = "server momentum step along the averaged delta"
    default_lr = 1.0


@register
class FedAdam(_ServerOptimizer):
    name = "fedadam"
    settings_model = FedAdamSettings
    summary = "server Adam step along the averaged delta"
    default_lr = 0.01


@register
class FedYogi(_ServerOptimizer):
    name = "fedyogi"
    settings_model = FedYogiSettings
    summary = "server Yogi step along the averaged delta"
    default_lr = 0.01
