"""Message payloads: adapter tensors <-> Flower records, and wire-size accounting."""

from __future__ import annotations

import math

# torch is imported here, before any record is converted inside a Ray actor (Flower's
# torch conversions report "PyTorch is required" otherwise).
import torch
from flwr.app import Array, ArrayRecord, Message
from flwr.common.serde import message_to_proto

ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"
SITE = "site"


WIRE_DTYPES = ("float32", "bfloat16")
# numpy (hence Flower's numpy serialization) has no bfloat16: bf16 adapters travel as
# their raw 2-byte patterns under this serialization type, and are widened back to
# float32 on arrival (the site trains, the server aggregates, in float32).
BF16_STYPE = "fedmedlora.bfloat16-raw"


def to_record(state: dict[str, torch.Tensor], wire_dtype: str = "float32") -> ArrayRecord:
    """Adapter tensors as float32, or as bfloat16 (half the bytes)."""
    if wire_dtype not in WIRE_DTYPES:
        raise ValueError(f"wire dtype must be one of {WIRE_DTYPES}, got {wire_dtype!r}")
    if wire_dtype == "float32":
        return ArrayRecord({k: v.detach().to("cpu", torch.float32) for k, v in state.items()})
    arrays = {}
    for key, value in state.items():
        raw = value.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16)
        arrays[key] = Array(
            dtype="bfloat16",
            shape=tuple(int(d) for d in value.shape),
            stype=BF16_STYPE,
            data=raw.numpy().tobytes(),
        )
    return ArrayRecord(arrays)


def is_bf16(array: Array) -> bool:
    """A bf16 adapter tensor whose bytes fit its shape (the rest is checked as numpy)."""
    if array.stype != BF16_STYPE or array.dtype != "bfloat16":
        return False
    return len(array.data) == 2 * math.prod(array.shape)


def wire_dtype(record: ArrayRecord) -> str:
    """How a record's tensors travel: sites reply the way the server sent."""
    return "bfloat16" if any(a.stype == BF16_STYPE for a in record.values()) else "float32"


def from_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """Float32 tensors from a record of float32 or bf16 arrays."""
    state = {}
    for key, array in record.items():
        if array.stype == BF16_STYPE:
            if not is_bf16(array):
                raise ValueError(f"{key}: malformed bfloat16 array (shape {array.shape})")
            raw = torch.frombuffer(bytearray(array.data), dtype=torch.bfloat16)
            state[key] = raw.reshape(array.shape).float()
        else:
            state[key] = torch.from_numpy(array.numpy())
    return state


def wire_bytes(message: Message) -> int:
    """Size of the message as Flower serializes it for the network (protobuf)."""
    return message_to_proto(message).ByteSize()
