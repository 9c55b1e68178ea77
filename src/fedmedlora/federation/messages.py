"""Message payloads: adapter tensors <-> Flower records, and wire-size accounting."""

from __future__ import annotations

# torch must be imported here before ArrayRecord.to_torch_state_dict() is called inside a
# Ray actor, or Flower reports "PyTorch is required".
import torch
from flwr.app import ArrayRecord, Message
from flwr.common.serde import message_to_proto

ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"
SITE = "site"


def to_record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    """Adapter tensors as float32 (numpy, hence Flower, has no bfloat16)."""
    return ArrayRecord({k: v.detach().to("cpu", torch.float32) for k, v in state.items()})


def from_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return dict(record.to_torch_state_dict())


def wire_bytes(message: Message) -> int:
    """Size of the message as Flower serializes it for the network (protobuf)."""
    return message_to_proto(message).ByteSize()
