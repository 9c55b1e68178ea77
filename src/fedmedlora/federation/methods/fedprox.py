"""FedProx (Li et al., MLSys 2020): sites add (μ/2)·‖w − w_g‖² to their loss
(`training/proximal.py`, `train.proximal_mu`); the server averages as Fed-MedLoRA."""

from __future__ import annotations

from typing import Any, Literal

from fedmedlora.federation.methods.base import Averaging, MethodSettings, register

DEFAULT_MU = 0.01  # train.proximal_mu when the config leaves it at 0


class FedProxSettings(MethodSettings):
    method: Literal["fedprox"] = "fedprox"

    def configure(self, config: Any) -> None:
        if config.train.proximal_mu == 0:
            config.train.proximal_mu = DEFAULT_MU


@register
class FedProx(Averaging):
    name = "fedprox"
    settings_model = FedProxSettings
    summary = "as fedmedlora; sites add the proximal term (train.proximal_mu)"
