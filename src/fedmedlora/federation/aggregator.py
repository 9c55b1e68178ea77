"""The server's aggregation: the configured method (federation/methods/, chosen by
`federation.aggregation.method`; docs/aggregation.md) wrapped in what holds for every
method. No Flower here: the strategy (strategy.py) only feeds it decoded replies.

Before the method combines anything, every reply is screened (methods/screening.py):
NaN/Inf, wrong keys or shapes, or an update norm far above the others' leave that site
out of the round. The weights (example counts, Fed-MedLoRA+ scores) are then capped at
`federation.max_site_weight` and renormalised (`aggregation.cap_weights`): they rest on
the sites' own claims, and no site may take the aggregate over by inflating them. With
differential privacy on, DP-FedAvg's clipped, noised, equally weighted average replaces
an averaging method's own average (methods/dp.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedmedlora.federation.aggregation import State, cap_weights
from fedmedlora.federation.methods.base import (
    Averaging,
    MethodSettings,
    Round,
    SiteUpdate,
    build,
)
from fedmedlora.federation.methods.dp import PrivacyBudgetExhausted, PrivacySettings, dp_average
from fedmedlora.federation.methods.screening import ScreeningSettings, require_sites, screen_updates
from fedmedlora.model.lora import LoraSettings

__all__ = ["DEFAULT_MAX_SITE_WEIGHT", "Aggregator", "SiteUpdate"]

# `federation.max_site_weight` when not set: with 3 or more sites in a round no site may
# outweigh all the others together; with 2 the cap would only mean equal weights.
DEFAULT_MAX_SITE_WEIGHT = 0.5


@dataclass
class Aggregator:
    settings: MethodSettings
    lora: LoraSettings
    initial: dict[str, torch.Tensor]
    # Fed-MedLoRA+ with server-held data: the loss of a full adapter on that data.
    server_loss: Callable[[dict[str, torch.Tensor]], float] | None = None
    screening: ScreeningSettings = field(default_factory=ScreeningSettings)
    weights_log: dict[int, dict[str, float]] = field(default_factory=dict)
    # round -> "site: reason" for each update left out by screening
    screened_out: dict[int, list[str]] = field(default_factory=dict)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    population: int = 1  # sites that may take part (the accountant's population)
    # round -> epsilon, delta, noise std, clipped updates (differential privacy)
    privacy_log: dict[int, dict[str, float]] = field(default_factory=dict)
    max_site_weight: float | None = None  # federation.max_site_weight

    def site_cap(self, sites: int) -> float:
        """The largest share one of `sites` weighted updates may get (see cap_weights)."""
        if self.max_site_weight is not None:
            return self.max_site_weight
        return DEFAULT_MAX_SITE_WEIGHT if sites >= 3 else 1.0

    def __post_init__(self) -> None:
        self.method = build(self.settings, self.lora, self.initial, self.server_loss)
        self.accountant = None
        if self.privacy.enabled:
            if not isinstance(self.method, Averaging):
                raise ValueError(f"differential privacy needs an averaging method, not {self.name}")
            import random

            from flwr.supercore.privacy_accounting import (
                NeighboringRelation,
                PrivacyConfig,
                SamplingMethod,
            )
            from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

            self.accountant = RdpAccountant(
                PrivacyConfig(
                    target_delta=self.privacy.target_delta,
                    population_size=self.population,
                    neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                    sampling_method=SamplingMethod.NO_AMPLIFICATION,
                    max_epsilon=self.privacy.max_epsilon,
                )
            )
            # The noise must be unpredictable to the sites: seeded from the OS, its state
            # kept in checkpoints so that a resumed run continues the same stream.
            self.noise = torch.Generator().manual_seed(random.SystemRandom().getrandbits(62))

    def state(self) -> dict:
        """Everything a resumed run needs (see federation/checkpoint.py)."""
        state = {
            "method": self.method.state(),
            "weights_log": self.weights_log,
            "screened_out": self.screened_out,
            "privacy_log": self.privacy_log,
        }
        if self.accountant is not None:
            state["accountant"] = self.accountant.state_dict()
            state["noise"] = self.noise.get_state()
        return state

    def load_state(self, state: dict) -> None:
        self.method.load_state(state["method"])
        for name in ("weights_log", "screened_out", "privacy_log"):
            setattr(self, name, state[name])
        if self.accountant is not None:
            self.accountant.load_state_dict(state["accountant"])
            self.noise.set_state(state["noise"])

    def _private_average(
        self, server_round: int, current: State, states: list[dict]
    ) -> dict[str, torch.Tensor]:
        """DP-FedAvg's release, accounted: refuses one that would exceed max ε."""
        from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

        assert self.accountant is not None
        event = GaussianPrivacyEvent(
            noise_multiplier=self.privacy.noise_multiplier,
            sample_size=len(states),
            population_size=self.population,
        )
        if self.privacy.max_epsilon is not None and self.accountant.would_exceed(event):
            spent = self.accountant.get_privacy_spent()
            raise PrivacyBudgetExhausted(
                f"releasing round {server_round} would exceed max_epsilon "
                f"{self.privacy.max_epsilon} (spent: epsilon {spent.epsilon:.3f})"
            )
        out, info = dp_average(
            current,
            states,
            clip_norm=self.privacy.clip_norm,
            noise_multiplier=self.privacy.noise_multiplier,
            generator=self.noise,
        )
        self.accountant.compose(event)
        spent = self.accountant.get_privacy_spent()
        self.privacy_log[server_round] = {
            "epsilon": spent.epsilon,
            "delta": spent.delta,
            "noise_std": info["noise_std"],
            "clip_norm": info["clip_norm"],
            "clipped_updates": info["clipped"],
            "updates": len(states),
        }
        return out

    @property
    def name(self) -> str:
        return self.settings.method

    def downlink(self, full: State) -> dict[str, torch.Tensor]:
        """What the server sends (FFA leaves out the frozen A, FedSA the personal B)."""
        return self.method.downlink(full)

    def uplink(self, sent: State) -> dict[str, torch.Tensor]:
        """What sites send back, of what the server sent."""
        return self.method.uplink(sent)

    def full(self, sent: State) -> dict[str, torch.Tensor]:
        """A complete PEFT adapter from what travels."""
        return self.method.full(sent)

    def weights(self, server_round: int, updates: Sequence[SiteUpdate]) -> list[float]:
        """Each site's share of the aggregate (logged per round as contribution scores)."""
        # Counts and losses are the sites' own claims: none may take over the aggregate.
        weights = cap_weights(self.method.weights(updates), self.site_cap(len(updates)))
        self.weights_log[server_round] = {u.site: w for u, w in zip(updates, weights, strict=True)}
        return weights

    def aggregate(
        self, server_round: int, current: State, updates: Sequence[SiteUpdate]
    ) -> dict[str, torch.Tensor]:
        """The next global adapter (in its sent form) from this round's replies."""
        if not updates:
            raise ValueError("nothing to aggregate")
        screened = screen_updates(
            self.uplink(current),
            [(u.site, u.state) for u in updates],
            lower_rank=self.method.lower_rank,
            norm_factor=self.screening.norm_factor,
        )
        self.screened_out[server_round] = screened.reasons()
        require_sites(screened, self.screening.min_updates)  # NotEnoughSites: round skipped
        updates = [updates[i] for i in screened.accepted]
        weights = self.weights(server_round, updates)
        states = [u.state for u in updates]
        if self.accountant is not None:  # equal weights are part of the DP guarantee
            assert isinstance(self.method, Averaging)
            self.weights_log[server_round] = {u.site: 1 / len(updates) for u in updates}
            averaged = self._private_average(server_round, current, states)
            return self.method.after_average(current, averaged)
        combined = self.method.combine(Round(server_round, current, states, weights, self.site_cap))
        if combined.weights is not None:
            self.weights_log[server_round] = dict(
                zip((u.site for u in updates), combined.weights, strict=True)
            )
        return combined.state

    def save(self, model: Any, sent: State, out_dir: Path) -> None:
        """The run's final adapter, as the method saves it."""
        self.method.save(model, sent, out_dir)
