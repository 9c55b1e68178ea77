"""The server's aggregation method, chosen by `federation.aggregation.method`: what it
sends to sites, what it expects back, and how it turns replies into the next global
adapter. No Flower here: the strategy (strategy.py) only feeds it decoded replies.

| method      | sites send | server combines                                          |
|-------------|------------|----------------------------------------------------------|
| fedmedlora  | A, B       | example-weighted average of every tensor (FedIT/FedAvg); |
|             |            | a head's rows over the sites that trained them           |
| fedmedlora+ | A, B       | average weighted by softmax(-validation loss / T)        |
| ffa         | B only     | average of B; A frozen at the shared seeded init (exact) |
| exact       | A, B       | best rank-r factors of sum_k p_k s_k B_k A_k (QR + SVD); |
|             |            | sites may train lower ranks of their own                 |
| fedsa       | A only     | average of A; every site keeps its own B (personalized)  |
| fedprox     | A, B       | as fedmedlora; sites add the proximal term               |
| fedavgm / fedadam / fedyogi | A, B | server optimizer step along the averaged delta |
| median / trimmed-mean / multi-krum / norm-clip | A, B | robust combination of the
  sites' updates, against hostile sites (methods/robust.py)                           |

Before any of these, every reply is screened (methods/screening.py): NaN/Inf, wrong keys
or shapes, or an update norm far above the others' leave that site out of the round.
The weights (example counts, Fed-MedLoRA+ scores) are then capped at
`federation.max_site_weight` and renormalised (`aggregation.cap_weights`): they rest on
the sites' own claims, and no site may take the aggregate over by inflating them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from fedmedlora.config import AggregationSettings, PrivacySettings, ScreeningSettings
from fedmedlora.federation.aggregation import (
    State,
    cap_weights,
    head_rows_from_trainers,
    weighted_average,
)
from fedmedlora.federation.methods import server_opt
from fedmedlora.federation.methods.dp import PrivacyBudgetExhausted, dp_average
from fedmedlora.federation.methods.fedmedlora_plus import plus_weights
from fedmedlora.federation.methods.fedsa import aggregate_shared, merge_personal, shared_part
from fedmedlora.federation.methods.ffa import b_only, ffa_aggregate, with_frozen_a
from fedmedlora.federation.methods.hetero_rank import hetero_aggregate
from fedmedlora.federation.methods.lora_pairs import lora_scaling
from fedmedlora.federation.methods.robust import robust_aggregate
from fedmedlora.federation.methods.screening import require_sites, screen_updates
from fedmedlora.model.lora import LoraSettings

# `federation.max_site_weight` when not set: with 3 or more sites in a round no site may
# outweigh all the others together; with 2 the cap would only mean equal weights.
DEFAULT_MAX_SITE_WEIGHT = 0.5
SERVER_OPTIMIZERS = {"fedavgm": 1.0, "fedadam": 0.01, "fedyogi": 0.01}  # default server lr
ROBUST = {"median": "median", "trimmed-mean": "trimmed_mean", "multi-krum": "multi_krum",
          "norm-clip": "norm_clip"}  # fmt: skip


@dataclass
class SiteUpdate:
    """One site's reply, decoded: its adapter tensors (as sent) and its numbers."""

    site: str
    state: dict[str, torch.Tensor]
    num_examples: float
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Aggregator:
    settings: AggregationSettings
    lora: LoraSettings
    initial: dict[str, torch.Tensor]
    # Fed-MedLoRA+ with server-held data: the loss of a full adapter on that data.
    server_loss: Callable[[dict[str, torch.Tensor]], float] | None = None
    screening: ScreeningSettings = field(default_factory=ScreeningSettings)
    opt_state: dict[str, torch.Tensor] = field(default_factory=dict)
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
        m = self.settings
        if m.method == "fedmedlora+" and m.validation == "server" and self.server_loss is None:
            raise ValueError("fedmedlora+ with server validation needs a server_loss function")
        self.accountant = None
        if self.privacy.enabled:
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

    def state_dict(self) -> dict:
        """Everything a resumed run needs (see federation/checkpoint.py)."""
        state = {
            "opt_state": self.opt_state,
            "weights_log": self.weights_log,
            "screened_out": self.screened_out,
            "privacy_log": self.privacy_log,
        }
        if self.accountant is not None:
            state["accountant"] = self.accountant.state_dict()
            state["noise"] = self.noise.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        for name in ("opt_state", "weights_log", "screened_out", "privacy_log"):
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
    def method(self) -> str:
        return self.settings.method

    def downlink(self, full: State) -> dict[str, torch.Tensor]:
        """What the server sends (and expects back): FFA leaves out the frozen A, FedSA
        the personal B."""
        if self.method == "ffa":
            return b_only(full)
        if self.method == "fedsa":
            return shared_part(full)
        return dict(full)

    def full(self, sent: State) -> dict[str, torch.Tensor]:
        """A complete PEFT adapter from what travels (FedSA: the shared part with the
        initial, zero B: the personalized adapters stay at the sites)."""
        if self.method == "ffa":
            return with_frozen_a(sent, self.initial)
        if self.method == "fedsa":
            return merge_personal(sent, self.initial)
        return dict(sent)

    def weights(self, server_round: int, updates: Sequence[SiteUpdate]) -> list[float]:
        """Each site's share of the aggregate (logged per round as contribution scores)."""
        counts = [u.num_examples for u in updates]
        if self.method != "fedmedlora+":
            total = sum(counts)
            weights = [c / total for c in counts]
        else:
            if self.settings.validation == "server":
                assert self.server_loss is not None
                losses = [self.server_loss(self.full(u.state)) for u in updates]
                for u, loss in zip(updates, losses, strict=True):
                    u.metrics["server-val-loss"] = loss
            else:
                missing = [u.site for u in updates if "val-loss" not in u.metrics]
                if missing:
                    raise ValueError(f"sites {missing} reported no validation loss")
                losses = [u.metrics["val-loss"] for u in updates]
            weights = plus_weights(
                losses, counts, self.settings.temperature, self.settings.size_mix
            )
        # Counts and losses are the sites' own claims: none may take over the aggregate.
        weights = cap_weights(weights, self.site_cap(len(updates)))
        self.weights_log[server_round] = {u.site: w for u, w in zip(updates, weights, strict=True)}
        return weights

    def _robust_params(self) -> dict:
        m = self.settings
        return {
            "median": {},
            "trimmed-mean": {"beta": m.trim_fraction},
            "multi-krum": {"f": m.krum_f, "m": m.krum_m},
            "norm-clip": {"max_norm": m.clip_norm},
        }[self.method]

    def aggregate(
        self, server_round: int, current: State, updates: Sequence[SiteUpdate]
    ) -> dict[str, torch.Tensor]:
        """The next global adapter (in its sent form) from this round's replies."""
        if not updates:
            raise ValueError("nothing to aggregate")
        screened = screen_updates(
            current,
            [(u.site, u.state) for u in updates],
            lower_rank=self.method == "exact",
            norm_factor=self.screening.norm_factor,
        )
        self.screened_out[server_round] = screened.reasons()
        require_sites(screened, self.screening.min_updates)  # NotEnoughSites: round skipped
        updates = [updates[i] for i in screened.accepted]
        weights = self.weights(server_round, updates)
        states = [u.state for u in updates]
        if self.method in ROBUST:
            params = self._robust_params()
            if self.method == "multi-krum":  # the cap holds among the selected updates too
                averaged = self.settings.krum_m or len(updates) - self.settings.krum_f
                params["max_weight"] = self.site_cap(averaged)
            aggregated, info = robust_aggregate(
                current, states, weights, ROBUST[self.method], **params
            )
            if self.method in ("median", "trimmed-mean"):  # every site counts alike
                self.weights_log[server_round] = {u.site: 1 / len(updates) for u in updates}
            if "selected" in info:  # multi-krum: only the selected sites count
                chosen = dict(zip(info["selected"], info["selected_weights"], strict=True))
                self.weights_log[server_round] = {
                    u.site: chosen.get(i, 0.0) for i, u in enumerate(updates)
                }
            return aggregated
        if self.method == "ffa" and self.accountant is None:
            return ffa_aggregate(states, weights)
        if self.method == "fedsa" and self.accountant is None:
            return aggregate_shared(states, weights)
        if self.method == "exact":  # sites may train ranks of their own
            return hetero_aggregate(
                states,
                weights,
                alpha=self.lora.alpha,
                global_rank=self.lora.rank,
                global_scaling=lora_scaling(self.lora.alpha, self.lora.rank),
                seed=server_round,
            )
        if self.accountant is not None:  # equal weights are part of the DP guarantee
            self.weights_log[server_round] = {u.site: 1 / len(updates) for u in updates}
            averaged = self._private_average(server_round, current, states)
        else:
            averaged = weighted_average(states, weights)
            averaged = head_rows_from_trainers(current, states, weights, averaged)
        if self.method in SERVER_OPTIMIZERS:
            settings = server_opt.ServerOptSettings(
                method=self.method,
                lr=self.settings.server_lr or SERVER_OPTIMIZERS[self.method],
                momentum=self.settings.server_momentum,
                beta1=self.settings.beta1,
                beta2=self.settings.beta2,
                tau=self.settings.tau,
            )
            averaged, self.opt_state = server_opt.step(current, averaged, self.opt_state, settings)
        return averaged
