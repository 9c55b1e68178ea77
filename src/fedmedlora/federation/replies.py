"""Every number in a site's reply, checked at the server before it is used.

`privacy.check_reply` decides what may cross the boundary at all (adapter tensors,
numbers, a site name); this module decides whether the numbers make sense, because each
is used: `num-examples` becomes an aggregation weight, `val-loss` a Fed-MedLoRA+ weight,
evaluation counts the reported scores. A hostile or broken site could otherwise crash
the server (a list or a missing count), poison the global adapter (a NaN weight), take
it over (10^9 examples, a validation loss of -10^6) or report scores that cannot exist
(a negative true-positive count). Names are checked against an allow-list derived from
what `client_app` sends, so that no metric key can carry free text (a note) either.

A reply that fails is left out of its round by the strategy, with the reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedmedlora.evaluation.inference import INFERENCE_METRICS
from fedmedlora.evaluation.metrics import KINDS, MODES
from fedmedlora.federation.messages import BF16_STYPE, is_bf16
from fedmedlora.federation.methods.lora_pairs import fits_shape

# The largest `num-examples` a site may claim: far above any annotated clinical corpus
# (MIMIC-III has 2.1 million notes; examples are chunks of annotated documents), so an
# honest site never meets it, while 10^9 or 1e300 are refused. Claims below it cannot
# dominate either: weights are capped by `federation.max_site_weight`.
MAX_EXAMPLES = 10**8
# Counts above 2^53 are not exact as the floats metric records may carry.
MAX_COUNT = 2**53

# What `client_app.train` sends: the weight, its training statistics, FedSA's personal
# round count and, when the site holds validation documents, its validation loss.
TRAIN_METRICS = frozenset(
    {
        "num-examples",
        "train-loss",
        "train-seconds",
        "train-steps",
        "train-tokens",
        "personal-rounds",
        "val-loss",
    }
)
TRAIN_INTEGERS = frozenset({"num-examples", "train-steps", "train-tokens", "personal-rounds"})
# What `client_app.evaluate` sends besides the per-type TP/FP/FN counts and parse repairs.
EVAL_METRICS = frozenset({"num-examples", *INFERENCE_METRICS})
EVAL_INTEGERS = frozenset(
    {"num-examples", "eval-chunks", "eval-generated-tokens", "eval-forward-passes"}
)
# The repairs `task.markup.parse` counts (tests/federation/test_replies.py keeps this in
# step with markup.py), sent as "parse/<name>".
PARSE_ISSUES = frozenset(
    {
        "stray_close_tag",
        "unclosed_tag",
        "text_drift",
        "unknown_type",
        "unlocatable_span",
        "empty_span",
        "duplicate_entity",
        "unknown_ref",
        "disallowed_relation",
    }
)
COUNT_STATS = ("tp", "fp", "fn")
# A type name when the server knows no schema: bounded like a site name, so no metric
# key can carry more than a short identifier.
TYPE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_RELATION_KEY = re.compile(r"^([^:]+):([^:>]+)->([^:>]+)$")  # "type:head->tail" (metrics.py)


class InvalidReply(ValueError):
    """A reply field the server cannot use."""


@dataclass(frozen=True)
class CountNames:
    """Which per-type evaluation counts a reply may carry ("entity/strict/drug/tp",
    "relation/lenient/modifies:negation->drug/fn"): the schema's types when the server
    knows them, else short identifiers."""

    entity_types: frozenset[str] | None = None
    relation_types: frozenset[str] | None = None

    @classmethod
    def of(cls, entity_types: Iterable[str], relation_types: Iterable[str]) -> CountNames:
        return cls(frozenset(entity_types), frozenset(relation_types))

    def _entity(self, name: str) -> bool:
        known = self.entity_types
        return name in known if known is not None else bool(TYPE_NAME.match(name))

    def allows(self, name: str) -> bool:
        parts = name.split("/")
        if len(parts) != 4 or parts[0] not in KINDS or parts[1] not in MODES:
            return False
        kind, _, key, stat = parts
        if stat not in COUNT_STATS:
            return False
        if kind == "entity":
            return self._entity(key)
        match = _RELATION_KEY.match(key)
        if not match:
            return False
        rel, head, tail = match.groups()
        known = self.relation_types
        rel_ok = rel in known if known is not None else bool(TYPE_NAME.match(rel))
        return rel_ok and self._entity(head) and self._entity(tail)


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidReply(f"{name} is {type(value).__name__}, not a number")
    if not math.isfinite(value):
        raise InvalidReply(f"{name} is {value}, not finite")
    return float(value)


def _count(name: str, value: object, low: int, high: int) -> int:
    number = _number(name, value)
    if not number.is_integer():
        raise InvalidReply(f"{name} is {value}, not a whole number")
    if not low <= number <= high:
        raise InvalidReply(f"{name} is {value:g}, outside [{low}, {high:g}]")
    return int(number)


def _shown(name: str) -> str:
    """A refused metric name, shortened: it may be anything, even note text."""
    return repr(name[:40] + ("..." if len(name) > 40 else ""))


def check_train_metrics(
    metrics: Mapping[str, object], *, needs_val_loss: bool = False
) -> dict[str, float]:
    """The training metrics as floats, or InvalidReply: only known names; every value a
    finite, non-negative number; counts whole; `num-examples` in [1, MAX_EXAMPLES];
    `val-loss` present when the method weights by it (`needs_val_loss`)."""
    unknown = sorted(k for k in metrics if k not in TRAIN_METRICS)
    if unknown:
        raise InvalidReply(f"metric {_shown(unknown[0])} is not one a site sends")
    if "num-examples" not in metrics:
        raise InvalidReply("num-examples is missing")
    if needs_val_loss and "val-loss" not in metrics:
        raise InvalidReply("val-loss is missing (fedmedlora+ weights sites by it)")
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if name == "num-examples":
            out[name] = float(_count(name, value, 1, MAX_EXAMPLES))
        elif name in TRAIN_INTEGERS:
            out[name] = float(_count(name, value, 0, MAX_COUNT))
        else:
            out[name] = _number(name, value)
            if out[name] < 0:
                raise InvalidReply(f"{name} is {value}, below 0")
    return out


def check_eval_metrics(
    metrics: Mapping[str, object], names: CountNames | None = None
) -> dict[str, float]:
    """The evaluation metrics, or InvalidReply: TP/FP/FN counts of allowed type names
    (`names`), parse-repair counts of known repairs, and the fixed names; counts are
    finite whole numbers in [0, MAX_COUNT], timings finite and non-negative."""
    names = names or CountNames()
    out: dict[str, float] = {}
    for name, value in metrics.items():
        issue = name.removeprefix("parse/")
        if name in EVAL_INTEGERS or names.allows(name) or (issue != name and issue in PARSE_ISSUES):
            out[name] = float(_count(name, value, 0, MAX_COUNT))
        elif name in EVAL_METRICS:
            out[name] = _number(name, value)
            if out[name] < 0:
                raise InvalidReply(f"{name} is {value}, below 0")
        else:
            raise InvalidReply(f"metric {_shown(name)} is not one a site sends")
    return out


def decode_arrays(
    record: ArrayRecord,
    shapes: Mapping[str, tuple[int, ...]],
    *,
    lower_rank: bool = False,
    wire_dtype: str = "float32",
) -> dict[str, torch.Tensor]:
    """The adapter tensors of a reply (float32), or InvalidReply. Checked after decoding,
    not only on the record's declared dtype and shape (which `privacy.check_reply`
    checks): the payload is a .npy blob with a header of its own, which a hostile site may
    make disagree with what the record declares. Sites reply in the dtype the server sent
    (`wire_dtype`: bf16 travels as raw 2-byte floats, messages.py)."""
    if set(record) != set(shapes):
        extra, missing = sorted(set(record) - set(shapes)), sorted(set(shapes) - set(record))
        raise InvalidReply(f"adapter keys differ: unexpected {extra[:3]}, missing {missing[:3]}")
    out: dict[str, torch.Tensor] = {}
    for key in record:
        array = record[key]
        if (array.stype == BF16_STYPE) != (wire_dtype == "bfloat16"):
            raise InvalidReply(f"{key}: not in the {wire_dtype} the server sent")
        try:
            if array.stype == BF16_STYPE:
                if not is_bf16(array):
                    raise ValueError("malformed bfloat16 array")
                raw = torch.frombuffer(bytearray(array.data), dtype=torch.bfloat16)
                arr = raw.reshape(array.shape).float().numpy()
            else:
                arr = array.numpy()
        except (TypeError, ValueError, RuntimeError, OSError, EOFError) as exc:
            raise InvalidReply(f"{key}: not a readable array ({exc})") from None
        if arr.dtype != np.float32:
            raise InvalidReply(f"{key}: holds {arr.dtype}, not float32")
        if not fits_shape(key, tuple(arr.shape), tuple(shapes[key]), lower_rank):
            raise InvalidReply(f"{key}: holds shape {arr.shape}, not the adapter's {shapes[key]}")
        if not np.isfinite(arr).all():
            raise InvalidReply(f"{key}: NaN or Inf values")
        out[key] = torch.from_numpy(np.array(arr, copy=True))
    return out
