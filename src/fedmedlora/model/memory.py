"""Memory and traffic of a site, estimated from a model's config.json alone (no weights).

`fedmedlora plan` prints these figures before anyone downloads 16 GB of weights. The
model is a decoder of the Llama family (Llama, Qwen2, Mistral, SmolLM2: RMSNorm, gated
SiLU MLP, grouped-query attention); the counts below are those layers' shapes.
Activation figures count the tensors autograd keeps for the backward pass of a LoRA step
with a frozen base (a frozen linear layer keeps no input for its own weight gradient, but
its LoRA branch keeps that input), each term checked against the tensors a real step
keeps (`benchmarks/memory_breakdown.py`, tests/model/test_memory.py) and the total
against the peak of live tensors and resident memory (`benchmarks/plan_accuracy.py`).
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


# On a CPU, glibc's malloc keeps memory torch has freed: its mmap threshold grows (up to
# 32 MiB) as large blocks are freed, so most of a step's tensors then come from the heap,
# and free chunks inside the heap stay resident. Peak RSS is then this share above the
# peak of live tensors: measured on SmolLM2, 1.48-2.02x over six settings (fp32, bf16
# autocast, bf16 weights, each with and without checkpointing; benchmarks/plan_accuracy.py,
# docs/scale.md). An empirical figure for this allocator, not a law.
CPU_ALLOCATOR_SHARE = 0.65


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes one site needs to train (all figures in bytes)."""

    weights: int
    lora: int
    gradients: int
    optimizer: int
    autocast_copies: int
    autocast_copies_checkpointed: int
    activations: int
    activations_checkpointed: int
    logits: int
    checkpointing: bool
    allocator_share: float = 0.0

    @property
    def step_tensors(self) -> int:
        """What one step allocates and frees again: activations, copies and logits."""
        if self.checkpointing:
            return self.activations_checkpointed + self.autocast_copies_checkpointed + self.logits
        return self.activations + self.autocast_copies + self.logits

    @property
    def live(self) -> int:
        """Peak of live tensors (what a GPU's `max_memory_allocated` reports)."""
        return self.weights + self.lora + self.gradients + self.optimizer + self.step_tensors

    @property
    def allocator(self) -> int:
        """Memory the allocator keeps beyond the live tensors (CPU: glibc's heap)."""
        return round(self.allocator_share * self.live)

    @property
    def total(self) -> int:
        return self.live + self.allocator

    def as_dict(self) -> dict:
        return {**asdict(self), "live": self.live, "allocator": self.allocator, "total": self.total}


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


def autocast_copy_bytes(
    shape: Shape, dtype: str, quantization: str, autocast_bf16: bool, n_lora: int
) -> tuple[int, int]:
    """(all layers, one layer + head): bf16 copies autocast makes of weights stored in
    another dtype. Autocast caches no cast of a frozen weight, so every linear layer casts
    its weight afresh and autograd keeps that copy to compute its input's gradient (the
    first layer's q/k/v read an input that needs none). k-bit layers dequantize inside
    bitsandbytes and keep only the packed weight; the head is fp32 there (PEFT's
    preparation). Under checkpointing only the recomputed layer's copies and the head's
    (outside the layers) are alive at once. The fp32 LoRA weights' bf16 casts are cached
    for the whole forward pass: 2 bytes per LoRA parameter in both cases."""
    if not autocast_bf16:
        return 0, 0
    lora = 2 * n_lora
    head = shape.vocab * shape.hidden * 2 if (quantization != "none" or dtype != "bf16") else 0
    if quantization != "none" or dtype == "bf16":
        return head + lora, head + lora
    per_layer = 2 * shape.linear_params // shape.layers
    h, q, kv = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    first_qkv = 2 * h * (q + 2 * kv)
    return shape.layers * per_layer - first_qkv + head + lora, per_layer + head + lora


def compute_bytes(dtype: str, quantization: str, autocast_bf16: bool) -> int:
    """Bytes per element of attention's tensors: 16-bit under autocast or a 16-bit model;
    fp32 otherwise, k-bit included (its layers return the fp32 residual stream's dtype)."""
    return 2 if (autocast_bf16 or (dtype != "fp32" and quantization == "none")) else 4


def layer_activation_bytes(
    shape: Shape,
    targets: list[str],
    *,
    dtype: str,
    quantization: str,
    autocast_bf16: bool,
    dropout: bool,
    rank: int,
) -> int:
    """Bytes one decoder layer keeps for backward, per token (measured tensor by tensor in
    benchmarks/memory_breakdown.py). A frozen linear layer keeps no input; the residual
    additions keep nothing.

    - norms: each RMSNorm keeps its input in fp32 (it upcasts), 2 per layer;
    - attention: sdpa keeps q, k, v and its output (no T x T matrix), in the compute dtype;
    - MLP: gate (the SiLU's input), the SiLU's output and up (the product's inputs); a
      k-bit layer returns its output in its input's dtype, fp32 after PEFT's preparation;
    - LoRA, per adapted projection: PEFT casts the input to the adapter's fp32; with
      dropout, the dropout's fp32 mask and the dropped input (which autocast casts again
      to bf16 for lora_A) are kept; lora_B keeps its rank-wide input. Without dropout and
      without any cast, projections reading the same tensor share one kept input.
    """
    h, i = shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    compute = compute_bytes(dtype, quantization, autocast_bf16)
    mlp_bytes = 4 if quantization != "none" else compute
    norms = 2 * h * 4
    attention = (2 * q + 2 * kv) * compute
    mlp = 3 * i * mlp_bytes
    dims = shape.projection_dims()
    lora_in = 2 if autocast_bf16 else 4
    if dropout:
        lora = sum(dims[p][0] * (4 + lora_in) for p in targets)
    elif lora_in == 4 and dtype == "fp32" and quantization == "none":
        groups = [("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"),
                  ("down_proj",)]  # fmt: skip
        lora = sum(dims[g[0]][0] * 4 for g in groups if any(p in targets for p in g))
    else:
        lora = sum(dims[p][0] * lora_in for p in targets)
    lora += len(targets) * rank * lora_in
    return norms + attention + mlp + lora


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
    device: str = "gpu",
) -> MemoryPlan:
    """Peak bytes of one LoRA training step of `batch_size` windows of `length` tokens.

    LoRA weights, their gradients and AdamW's two moments are fp32 (PEFT keeps adapters
    in fp32 over a 16-bit base). With checkpointing each layer keeps only its input (the
    residual stream: fp32 unless the whole model is 16-bit), plus one layer's activations
    while it is recomputed. Logits are computed for the target tail only
    (training/loop.py); at the loss three fp32 tensors of batch x kept positions x
    vocabulary are alive at once (forward: the fp32 logits and their log-softmax;
    backward: that log-softmax and two gradients). The terms add up to slightly more than
    the peak: the gradients and the recomputed layer are counted although they are not
    all alive at the peak. `device="cpu"` adds what glibc's heap keeps resident beyond the
    live tensors (CPU_ALLOCATOR_SHARE of them).
    """
    n_lora = lora_params(shape, rank, target_modules)
    tokens = batch_size * length
    targets = lora_targets(target_modules)
    per_layer = tokens * layer_activation_bytes(
        shape, targets, dtype=dtype, quantization=quantization,
        autocast_bf16=autocast_bf16, dropout=dropout > 0, rank=rank,
    )  # fmt: skip
    # The first layer reads the frozen embedding, which needs no gradient: its first norm
    # keeps no input, and q/k/v (which read that norm) keep no dropout mask.
    reads_norm = sum(1 for p in ("q_proj", "k_proj", "v_proj") if p in targets)
    first_layer = tokens * shape.hidden * 4 * (1 + (reads_norm if dropout > 0 else 0))
    residual = 2 if (dtype != "fp32" and quantization == "none") else 4
    layer_input = tokens * shape.hidden * residual
    final_norm = tokens * shape.hidden * 4
    if attention == "eager":  # scores and probabilities, B x heads x T x T
        compute = compute_bytes(dtype, quantization, autocast_bf16)
        per_layer += 2 * batch_size * shape.heads * length * length * compute
    kept = batch_size * math.ceil(length * TARGET_SHARE)
    copies, copies_ckpt = autocast_copy_bytes(shape, dtype, quantization, autocast_bf16, n_lora)
    return MemoryPlan(
        weights=weight_bytes(shape, dtype, quantization),
        lora=4 * n_lora,
        gradients=4 * n_lora,
        optimizer=8 * n_lora,
        autocast_copies=copies,
        autocast_copies_checkpointed=copies_ckpt,
        activations=shape.layers * per_layer + final_norm - first_layer,
        activations_checkpointed=shape.layers * layer_input + final_norm + per_layer,
        logits=kept * shape.vocab * 12,
        checkpointing=checkpointing,
        allocator_share=CPU_ALLOCATOR_SHARE if device == "cpu" else 0.0,
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
