"""What may cross a site's boundary, checked on both sides.

A site's reply may carry only: the adapter tensors (float32 arrays, or bf16 ones where the
server sent bf16, under the adapter's own keys and shapes), numeric metrics (counts,
losses, timings) and its site name. No text, no token ids, no per-document records. The
client checks before sending; the server
checks again before using a reply, and rejects anything else.
"""

from __future__ import annotations

import re

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedmedlora.federation.messages import BF16_STYPE, is_bf16
from fedmedlora.federation.methods.lora_pairs import fits_shape

ALLOWED_CONFIG = {"site": re.compile(r"^[A-Za-z0-9_.-]{1,64}$")}


class EgressViolation(RuntimeError):
    """A message would carry something other than adapter tensors and numbers."""


def check_reply(
    content: RecordDict,
    adapter_shapes: dict[str, tuple[int, ...]] | None,
    *,
    lower_rank: bool = False,
) -> None:
    """Raise EgressViolation unless `content` is adapter tensors (matching
    `adapter_shapes` when given; with `lower_rank`, LoRA factors may have a smaller rank,
    for sites of their own rank), numeric metrics and a site name."""
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            if adapter_shapes is None:
                raise EgressViolation(f"record {name!r}: arrays are only sent after training")
            _check_arrays(record, adapter_shapes, lower_rank)
        elif isinstance(record, MetricRecord):
            for key, value in record.items():
                values = value if isinstance(value, list) else [value]
                if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                    raise EgressViolation(f"metric {key!r} is not numeric")
                if isinstance(value, list) and len(value) > 1024:
                    raise EgressViolation(f"metric {key!r} is a long list ({len(value)} values)")
        elif isinstance(record, ConfigRecord):
            for key, value in record.items():
                pattern = ALLOWED_CONFIG.get(key)
                if pattern is None or not isinstance(value, str) or not pattern.match(value):
                    raise EgressViolation(f"config entry {key!r} is not allowed in a reply")
        else:
            raise EgressViolation(f"record {name!r} of type {type(record).__name__}")


def _check_arrays(
    record: ArrayRecord, shapes: dict[str, tuple[int, ...]], lower_rank: bool = False
) -> None:
    keys = set(record.keys())
    if keys != set(shapes):
        extra, missing = sorted(keys - set(shapes))[:3], sorted(set(shapes) - keys)[:3]
        raise EgressViolation(f"adapter keys differ: unexpected {extra}, missing {missing}")
    for key in record:
        arr = record[key]
        if not fits_shape(key, tuple(arr.shape), tuple(shapes[key]), lower_rank):
            raise EgressViolation(f"{key}: shape {arr.shape} is not the adapter's {shapes[key]}")
        if arr.stype == BF16_STYPE:  # bf16 adapters: raw 2-byte floats (messages.py)
            if not is_bf16(arr):
                raise EgressViolation(f"{key}: malformed bfloat16 array")
            continue
        # float32 is what `messages.to_record` sends; anything else is not the adapter as
        # sent (float16 loses it, float64 or ints are another kind of payload).
        if str(arr.dtype) != "float32":
            raise EgressViolation(f"{key}: dtype {arr.dtype} is not float32, the adapter's dtype")
