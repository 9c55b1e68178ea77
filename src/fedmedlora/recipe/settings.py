"""What every site needs to train and evaluate, identical everywhere: the "recipe" part of
a run config, which the server sends to sites with each message (`config.py` composes it
into the run config)."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedmedlora.data.settings import DataSettings, SyntheticData
from fedmedlora.evaluation.inference import GenerationSettings
from fedmedlora.model.loading import PRECISIONS, check_device_name
from fedmedlora.model.lora import LoraSettings
from fedmedlora.training.loop import TrainSettings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSettings(_Strict):
    name: str = "smollm2-135m"
    # generative: a causal LM writes markup (Fed-MedLoRA); tagging: an encoder with a
    # token-classification head (the BERT baseline).
    task: Literal["generative", "tagging"] = "generative"
    precision: str = "auto"
    device: str = "auto"
    # Base-model memory (docs/scale.md; `fedmedlora plan` estimates each choice).
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    quantization: Literal["none", "nf4", "int8"] = Field(
        "none", description="k-bit base through bitsandbytes (nf4: QLoRA); dtype computes"
    )
    attention: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    device_map: Literal["auto"] | None = Field(
        None, description="auto: spread a model too big for one GPU over the site's GPUs"
    )

    @field_validator("precision")
    @classmethod
    def _known_precision(cls, value: str) -> str:
        if value not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        return check_device_name(value)


class TaskSettings(_Strict):
    max_chunk_tokens: int = Field(48, ge=8)
    max_length: int = Field(384, ge=32)
    tagger_window_tokens: int = Field(128, ge=8, le=500)


class Recipe(_Strict):
    """What every site needs to train and evaluate, identical everywhere."""

    seed: int = 0
    schema_name: str = Field("clinical", alias="schema")
    model: ModelSettings = ModelSettings()
    lora: LoraSettings = LoraSettings()
    task: TaskSettings = TaskSettings()
    train: TrainSettings = TrainSettings()
    generation: GenerationSettings = GenerationSettings()
    data: DataSettings = DataSettings(synthetic=SyntheticData())
    threads: int | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_json(self) -> str:
        """Canonical JSON, as sent to sites inside Flower messages."""
        return json.dumps(json.loads(self.model_dump_json()), sort_keys=True)
