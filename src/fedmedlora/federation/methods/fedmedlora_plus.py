"""Fed-MedLoRA+: data-aware site weights for the adapter average.

Example counts say how much a site trained, not how good its adapter is for the
federation; Fed-MedLoRA+ weights each site by how well its adapter does on validation
data (a softmax over negative validation losses), optionally mixed with the size weights
so that no site with data is ever ignored entirely.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from fedmedlora.data.settings import SiteSource
from fedmedlora.federation.methods.base import (
    Averaging,
    MethodSettings,
    SiteUpdate,
    register,
)

DEFAULT_VALIDATION_FRACTION = 0.1  # train.validation_fraction when the config has none


def plus_weights(
    val_losses: Sequence[float],
    num_examples: Sequence[float],
    temperature: float = 1.0,
    size_mix: float = 0.0,
) -> list[float]:
    """Site weights (1 - size_mix)·softmax(-loss / T) + size_mix·(n_k / Σ n), summing to 1.

    Lower validation loss gets more weight; T → ∞ tends to equal weights, T → 0 to all
    weight on the best site. Computed as exp((min_loss - loss_k) / T), so that no
    exponent is positive and huge losses or tiny temperatures cannot overflow. Counts
    must be non-negative; they must sum to more than zero only when size_mix > 0.
    """
    if not val_losses:
        raise ValueError("no sites to weight")
    if len(val_losses) != len(num_examples):
        raise ValueError(f"{len(val_losses)} losses but {len(num_examples)} example counts")
    losses = [float(v) for v in val_losses]
    counts = [float(n) for n in num_examples]
    if not all(math.isfinite(v) for v in losses):
        raise ValueError(f"validation losses must be finite, got {losses}")
    if not all(math.isfinite(n) and n >= 0 for n in counts):
        raise ValueError(f"example counts must be finite and non-negative, got {counts}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    if not (0.0 <= size_mix <= 1.0):
        raise ValueError(f"size_mix must be in [0, 1], got {size_mix}")
    best = min(losses)
    # (best - v) may overflow to -inf for absurd spreads; exp(-inf) = 0 is the right limit.
    exps = [math.exp((best - v) / temperature) for v in losses]
    z = math.fsum(exps)  # >= 1: the best site contributes exp(0)
    softmax = [e / z for e in exps]
    if size_mix == 0.0:
        return softmax
    total = math.fsum(counts)
    if total <= 0:
        raise ValueError(f"size_mix > 0 needs a positive example total, got {counts}")
    return [(1 - size_mix) * s + size_mix * n / total for s, n in zip(softmax, counts, strict=True)]


class PlusSettings(MethodSettings):
    """Weights softmax(-validation loss / temperature), mixed with size weights."""

    method: Literal["fedmedlora+"] = "fedmedlora+"
    temperature: float = Field(0.5, gt=0)
    size_mix: float = Field(0.0, ge=0, le=1)
    validation: Literal["sites", "server"] = Field(
        "sites",
        description="sites: each site reports the loss on its own held-out documents; "
        "server: the server scores every adapter on `server_validation`",
    )
    server_validation: SiteSource | None = Field(
        None, description="annotated documents the server holds (validation: server)"
    )

    @model_validator(mode="after")
    def _server_data(self) -> PlusSettings:
        if self.validation == "server" and self.server_validation is None:
            raise ValueError("validation: server needs server_validation (the server's data)")
        return self

    def configure(self, config: Any) -> None:
        if self.needs_site_validation and config.train.validation_fraction == 0:
            config.train.validation_fraction = DEFAULT_VALIDATION_FRACTION

    @property
    def needs_site_validation(self) -> bool:
        return self.validation == "sites"

    def server_data(self) -> SiteSource | None:
        return self.server_validation


@register
class FedMedLoRAPlus(Averaging):
    name = "fedmedlora+"
    settings_model = PlusSettings
    summary = "average weighted by softmax(-validation loss / T)"
    settings: PlusSettings

    def __init__(self, settings, lora, initial, server_loss=None) -> None:
        super().__init__(settings, lora, initial, server_loss)
        if settings.validation == "server" and server_loss is None:
            raise ValueError("fedmedlora+ with server validation needs a server_loss function")

    def weights(self, updates: Sequence[SiteUpdate]) -> list[float]:
        """Each site's loss on the server's data, or the one it reports on its own."""
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
        counts = [u.num_examples for u in updates]
        return plus_weights(losses, counts, self.settings.temperature, self.settings.size_mix)
