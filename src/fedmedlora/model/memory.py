"""Memory and traffic of a site, estimated from a model's config.json alone (no weights).

`fedmedlora plan` prints these figures before anyone downloads 16 GB of weights. The
model is a decoder of the Llama family (Llama, Qwen2, Mistral, SmolLM2: RMSNorm, gated
SiLU MLP, grouped-query attention); the counts below are those layers' shapes.
Activation figures count the tensors autograd keeps for the backward pass of a LoRA step
with a frozen base (a frozen linear layer keeps no input for its own weight gradient, but
its LoRA branch keeps that input): measured against a real step in
`benchmarks/plan_accuracy.py`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# Bytes per weight of a quantized linear layer. nf4: 4 bits, one absmax per 64 weights,
# itself 8-bit with an fp32 constant per 256 absmax under double quantization (QLoRA).
# int8 (LLM.int8()): one byte, plus an fp32 scale per output row (counted separately).
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
INT8_BYTES = 1.0
# The loss computes logits only over the target tail of each window (training/loop.py);
# the plan assumes targets fill half the window.
TARGET_SHARE = 0.5


@dataclass(frozen=True)
class Shape:
    """What the estimate needs from a config.json."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    qkv_bias: bool

    @classmethod
    def from_config(cls, config: dict, where: str = "config.json") -> Shape:
        try:
            hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
            return cls(
                vocab=int(config["vocab_size"]),
                hidden=hidden,
                intermediate=int(config["intermediate_size"]),
                layers=int(config["num_hidden_layers"]),
                heads=heads,
                kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                tied=bool(config.get("tie_word_embeddings", False)),
                # Qwen2 has q/k/v biases without saying so; Llama says attention_bias.
                qkv_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: not a decoder config this planner knows ({exc})") from None

    @classmethod
    def from_file(cls, path: str | Path) -> Shape:
        return cls.from_config(json.loads(Path(path).read_text(encoding="utf-8")), str(path))

    def projection_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def linear_params(self) -> int:
        """Weights of the decoder layers' linear layers (what quantization shrinks)."""
        return self.layers * sum(a * b for a, b in self.projection_dims().values())

    @property
    def other_params(self) -> int:
        """Embeddings, LM head, norms and biases (kept in 16/32 bits under quantization)."""
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        norms = (2 * self.layers + 1) * self.hidden
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        bias = self.layers * (q + 2 * kv) if self.qkv_bias else 0
        return embeddings + norms + bias

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params


def lora_targets(target_modules: list[str] | str) -> list[str]:
    """The projections a LoRA setting adapts ("all-linear": all 7; PEFT leaves out the
    LM head)."""
    if target_modules == "all-linear":
        return list(PROJECTIONS)
    names = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    return [p for p in PROJECTIONS if any(n == p or n.endswith("." + p) for n in names)]


def lora_params(shape: Shape, rank: int, target_modules: list[str] | str) -> int:
    dims = shape.projection_dims()
    return shape.layers * sum(rank * sum(dims[p]) for p in lora_targets(target_modules))


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes one site needs to train (all figures in bytes)."""

    weights: int
    lora: int
    gradients: int
    optimizer: int
    activations: int
    activations_checkpointed: int
    logits: int
    checkpointing: bool

    @property
    def total(self) -> int:
        acts = self.activations_checkpointed if self.checkpointing else self.activations
        return self.weights + self.lora + self.gradients + self.optimizer + acts + self.logits

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def weight_bytes(shape: Shape, dtype: str, quantization: str) -> int:
    """Base-model weights: all in `dtype`, or k-bit linear layers with the rest in fp32
    (PEFT's k-bit preparation upcasts embeddings, head and norms for stable training)."""
    if quantization == "none":
        return shape.params * DTYPE_BYTES[dtype]
    per_weight = NF4_BYTES if quantization == "nf4" else INT8_BYTES
    scales = (
        0
        if quantization == "nf4"
        else 4 * shape.layers * sum(out for _, out in shape.projection_dims().values())
    )
    return math.ceil(shape.linear_params * per_weight) + scales + 4 * shape.other_params


def layer_activation_bytes(shape: Shape, targets: list[str], act_bytes: int, dropout: bool) -> int:
    """Bytes one decoder layer keeps for backward, per token.

    Hidden-size tensors: the two RMSNorm inputs and outputs, the attention output (o_proj's
    input) and the residual branch, 8 in all, of which the norms keep 2 in fp32 whatever
    the dtype (they upcast). Attention: q, k, v and the output (sdpa keeps no T x T
    matrix). MLP: gate, its SiLU, up and their product. LoRA: PEFT casts each adapted
    projection's input to the adapter's fp32 and, with dropout, keeps that dropped copy;
    a 16-bit run also keeps the copy autocast makes of it.
    """
    h, i = shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    hidden = 2 * h * 4 + 6 * h * act_bytes
    attention = (2 * q + 2 * kv) * act_bytes
    mlp = 4 * i * act_bytes
    dims = shape.projection_dims()
    inputs = sum(dims[p][0] for p in targets)
    lora = inputs * ((4 if dropout else 0) + (2 if act_bytes == 2 else 0))
    return hidden + attention + mlp + lora


def plan_memory(
    shape: Shape,
    *,
    dtype: str,
    quantization: str,
    rank: int,
    target_modules: list[str] | str,
    dropout: float,
    batch_size: int,
    length: int,
    checkpointing: bool,
    autocast_bf16: bool = False,
    attention: str = "sdpa",
) -> MemoryPlan:
    """Peak bytes of one LoRA training step of `batch_size` windows of `length` tokens.

    LoRA weights, their gradients and AdamW's two moments are fp32 (PEFT keeps adapters
    in fp32 over a 16-bit base). Activations are 16-bit under a 16-bit or k-bit base or
    bf16 autocast, else fp32. With checkpointing only each layer's input is kept, plus one
    layer's activations while it is recomputed.
    """
    n_lora = lora_params(shape, rank, target_modules)
    tokens = batch_size * length
    act_bytes = 2 if (dtype != "fp32" or autocast_bf16) else 4
    targets = lora_targets(target_modules)
    per_layer = tokens * layer_activation_bytes(shape, targets, act_bytes, dropout > 0)
    layer_input = tokens * shape.hidden * act_bytes
    if attention == "eager":  # scores and probabilities, B x heads x T x T
        per_layer += 2 * batch_size * shape.heads * length * length * act_bytes
    # Logits of the target tail in the activation dtype, their fp32 copy for the loss,
    # and the fp32 gradient: three tensors of batch x kept positions x vocabulary.
    kept = batch_size * math.ceil(length * TARGET_SHARE)
    logits = kept * shape.vocab * (act_bytes + 4 + 4)
    return MemoryPlan(
        weights=weight_bytes(shape, dtype, quantization),
        lora=4 * n_lora,
        gradients=4 * n_lora,
        optimizer=8 * n_lora,
        activations=shape.layers * per_layer + layer_input,
        activations_checkpointed=(shape.layers + 1) * layer_input + per_layer,
        logits=logits,
        checkpointing=checkpointing,
    )


@dataclass(frozen=True)
class TrafficPlan:
    adapter_bytes: int  # one adapter, one way
    round_bytes: int  # all sites, down and up, one training round
    run_bytes: int  # training and evaluation messages of the whole run
    full_model_run_bytes: int  # the same messages carrying the whole model (FedAvg)

    def as_dict(self) -> dict:
        return asdict(self)


def plan_traffic(
    shape: Shape,
    *,
    rank: int,
    target_modules: list[str] | str,
    wire_bytes: int,
    model_bytes: int,
    sites: int,
    rounds: int,
    evaluations: int,
) -> TrafficPlan:
    """Adapter bytes on the wire: each training round sends the adapter down to and up
    from every site; each evaluation sends it down."""
    adapter = lora_params(shape, rank, target_modules) * wire_bytes
    messages = sites * (2 * rounds + evaluations)
    return TrafficPlan(
        adapter_bytes=adapter,
        round_bytes=2 * sites * adapter,
        run_bytes=messages * adapter,
        full_model_run_bytes=messages * shape.params * model_bytes,
    )
