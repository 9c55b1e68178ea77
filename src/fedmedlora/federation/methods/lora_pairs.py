"""Which tensors of a PEFT adapter state form LoRA (A, B) pairs, and which do not.

Product-aware methods (exact aggregation, FFA, FedSA, heterogeneous ranks) must treat a
module's two factors as one object, ΔW = s·B·A, while everything else (a head saved via
`modules_to_save`, a saved embedding, `lora_B.bias`) is linear in the model and can be
averaged plainly. Keys are PEFT's own, as `peft.get_peft_model_state_dict` returns them
(adapter name stripped), e.g. `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`
with shape (r, in_features) and `...q_proj.lora_B.weight` with shape (out_features, r).
Embedding adapters (`lora_embedding_A` (r, num_embeddings), `lora_embedding_B` (dim, r))
are pairs too: their B·A is the transposed delta, which does not matter to any method here
because every method is linear in, or preserves, the product B·A.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import torch

# (suffix of A, suffix of B) for each kind of LoRA layer PEFT saves.
PAIR_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".lora_A.weight", ".lora_B.weight"),
    (".lora_embedding_A", ".lora_embedding_B"),
)
# Keys that mention a LoRA factor but are not one; anything else that does is refused, so
# that e.g. a raw `model.state_dict()` key (`lora_A.default.weight`) is never silently
# averaged as a plain tensor.
LORA_B_BIAS_SUFFIX = ".lora_B.bias"
_LOOKS_LIKE_FACTOR = re.compile(r"\.lora_(?:embedding_)?[AB](?:\.|$)")


class LoraSplit(NamedTuple):
    """`pairs`: {module_prefix: (A_key, B_key)} in first-seen order; `others`: every other
    key (heads, saved embeddings, `lora_B.bias`, DoRA magnitudes), in input order."""

    pairs: dict[str, tuple[str, str]]
    others: list[str]

    @property
    def a_keys(self) -> list[str]:
        return [a for a, _ in self.pairs.values()]

    @property
    def b_keys(self) -> list[str]:
        return [b for _, b in self.pairs.values()]


def split_lora(keys: Iterable[str]) -> LoraSplit:
    """Group `keys` (or a state dict's keys) into LoRA pairs and other keys.

    Raises ValueError for an A without its B (or the reverse), for a key that looks like a
    LoRA factor but is not in PEFT's state-dict spelling, and for a module with two kinds
    of factors.
    """
    a_of: dict[str, str] = {}
    b_of: dict[str, str] = {}
    order: dict[str, None] = {}  # module prefixes in first-seen order
    others: list[str] = []
    for key in keys:
        role = _factor_role(key)
        if role is None:
            if _LOOKS_LIKE_FACTOR.search(key) and not key.endswith(LORA_B_BIAS_SUFFIX):
                raise ValueError(
                    f"unrecognised LoRA key {key!r}: expected PEFT's get_peft_model_state_dict "
                    "keys (adapter name stripped), ending in "
                    + " or ".join(s for pair in PAIR_SUFFIXES for s in pair)
                )
            others.append(key)
            continue
        prefix, which = role
        table = a_of if which == "A" else b_of
        if prefix in table:
            raise ValueError(
                f"module {prefix!r} has two LoRA {which} factors: {table[prefix]!r} and {key!r}"
            )
        table[prefix] = key
        order.setdefault(prefix)
    pairs: dict[str, tuple[str, str]] = {}
    for prefix in order:
        a, b = a_of.get(prefix), b_of.get(prefix)
        if a is None or b is None:
            have, lack = (b, "A") if a is None else (a, "B")
            raise ValueError(f"LoRA factor {have!r} has no matching lora_{lack} for {prefix!r}")
        if _kind(a) != _kind(b):
            raise ValueError(f"module {prefix!r} mixes factor kinds: {a!r} and {b!r}")
        pairs[prefix] = (a, b)
    return LoraSplit(pairs, others)


def is_lora_a(key: str) -> bool:
    """Whether `key` is a LoRA A factor (for B-only or A-only states, which have no pairs)."""
    role = _factor_role(key)
    return role is not None and role[1] == "A"


def is_lora_b(key: str) -> bool:
    """Whether `key` is a LoRA B factor (lora_B.bias is not: it is an ordinary tensor)."""
    role = _factor_role(key)
    return role is not None and role[1] == "B"


def pair_rank(state: Mapping[str, torch.Tensor], a_key: str, b_key: str) -> int:
    """The rank r of one pair, after checking A is (r, in) and B is (out, r)."""
    a, b = state[a_key], state[b_key]
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(
            f"{a_key}/{b_key}: only 2-D factors (Linear, Conv1D, Embedding) are supported, "
            f"got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[0] != b.shape[1]:
        raise ValueError(
            f"{a_key}/{b_key}: A is {tuple(a.shape)} and B is {tuple(b.shape)}, "
            "expected A (r, in) and B (out, r) with the same r"
        )
    return int(a.shape[0])


def lora_ranks(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """{module_prefix: rank} of every pair in `state` (shapes checked)."""
    return {p: pair_rank(state, a, b) for p, (a, b) in split_lora(state).pairs.items()}


def lora_scaling(alpha: float, rank: int, *, rslora: bool = False) -> float:
    """PEFT's scaling s of ΔW = s·B·A: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    if rank < 1 or not math.isfinite(alpha):
        raise ValueError(f"need rank >= 1 and a finite alpha, got rank={rank}, alpha={alpha}")
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def fits_shape(key: str, got: tuple[int, ...], want: tuple[int, ...], lower_rank: bool) -> bool:
    """Same shape, or (with `lower_rank`, for sites that train a rank of their own) a LoRA
    factor of rank 1..r: A (r, in) and B (out, r) with the same in and out. The one rule
    both the egress check and the server's screening apply."""
    if tuple(got) == tuple(want):
        return True
    if not lower_rank or len(got) != 2 or len(want) != 2:
        return False
    if key.endswith(".lora_A.weight"):
        return got[1] == want[1] and 1 <= got[0] <= want[0]
    if key.endswith(".lora_B.weight"):
        return got[0] == want[0] and 1 <= got[1] <= want[1]
    return False


def _factor_role(key: str) -> tuple[str, str] | None:
    for a_suffix, b_suffix in PAIR_SUFFIXES:
        if key.endswith(a_suffix):
            return key[: -len(a_suffix)], "A"
        if key.endswith(b_suffix):
            return key[: -len(b_suffix)], "B"
    return None


def _kind(key: str) -> int:
    return next(i for i, pair in enumerate(PAIR_SUFFIXES) if key.endswith(pair))
