"""Fed-MedLoRA (FedIT/FedAvg over LoRA): the example-weighted average of every tensor,
A and B factors averaged separately; a task head's rows over the sites that trained
them (`aggregation.head_rows_from_trainers`)."""

from __future__ import annotations

from typing import Literal

from fedmedlora.federation.methods.base import Averaging, MethodSettings, register


class FedMedLoRASettings(MethodSettings):
    method: Literal["fedmedlora"] = "fedmedlora"


@register
class FedMedLoRA(Averaging):
    name = "fedmedlora"
    settings_model = FedMedLoRASettings
    summary = "example-weighted average of every tensor (FedIT/FedAvg)"
