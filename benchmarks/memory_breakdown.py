"""Where a LoRA training step's memory goes, tensor by tensor, on CPU: the figures
`model/memory.py`'s terms are checked against.

One warm-up step creates AdamW's state; the second step runs with
- a saved-tensors hook that records every tensor autograd keeps for backward (deduplicated
  by storage; a frozen parameter saved as itself costs nothing and is listed apart), with
  the module that saved it, so each term of the estimate can be compared on its own;
- torch's profiler allocator events, whose running sum gives the peak of live tensors and
  the phase (forward, backward, optimizer) it falls in.

    .venv/bin/python benchmarks/memory_breakdown.py --dtype fp32 --precision bf16-autocast
    .venv/bin/python benchmarks/memory_breakdown.py --all   # the three settings, +-ckpt

Prints JSON (bytes): the weights, adapter and optimizer state, every kept tensor grouped
by the module that kept it, and the live peak and its phase; `--all` writes
docs/measured/memory_breakdown.json.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

from measuring import write_result  # beside this script

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [("fp32", "fp32"), ("fp32", "bf16-autocast"), ("bf16", "bf16-autocast")]


def step_breakdown(
    model_name: str, dtype: str, precision: str, batch: int, length: int, checkpointing: bool
) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from fedmedlora.model.loading import autocast, load_causal_lm
    from fedmedlora.model.lora import LoraSettings, add_lora
    from fedmedlora.training.batching import collate
    from fedmedlora.training.examples import Example
    from fedmedlora.training.loop import causal_lm_loss

    torch.set_num_threads(1)
    base = load_causal_lm(model_name, dtype=dtype, gradient_checkpointing=checkpointing)
    model = add_lora(base, LoraSettings(), seed=0)
    vocab = base.config.vocab_size
    g = torch.Generator().manual_seed(0)
    half = length // 2
    examples = [
        Example(
            torch.randint(3, vocab, (length - half,), generator=g).tolist(),
            torch.randint(3, vocab, (half,), generator=g).tolist(),
        )
        for _ in range(batch)
    ]
    data = collate(examples, 0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    device = torch.device("cpu")
    model.train()

    def step():
        with autocast(precision, device):
            loss = causal_lm_loss(model, data)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # AdamW's state exists from here on

    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    weights = sum(
        t.untyped_storage().nbytes() for t in [*base.parameters(), *base.buffers()]
    ) - sum(p.untyped_storage().nbytes() for p in params)
    lora = sum(p.untyped_storage().nbytes() for p in params)
    optim = sum(
        v.untyped_storage().nbytes()
        for s in optimizer.state.values()
        for v in s.values()
        if torch.is_tensor(v) and v.dim() > 0
    )

    # Which module is running, for the saved-tensors hook to name the saver.
    stack: list[str] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = []

    def enter(module, _args) -> None:
        stack.append(names[module])

    def leave(_module, _args, _out) -> None:
        stack.pop()

    for m in model.modules():
        hooks += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    saved: dict[int, tuple[int, str, str, tuple]] = {}
    frozen_saved = 0

    def pack(t):
        nonlocal frozen_saved
        s = t.untyped_storage()
        ptr = s.data_ptr()
        if ptr in param_ptrs:
            frozen_saved += 1
        elif ptr not in saved:
            saved[ptr] = (s.nbytes(), stack[-1] if stack else "", str(t.dtype), tuple(t.shape))
        return t

    keep = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with keep, record_function("phase:forward"), autocast(precision, device):
            loss = causal_lm_loss(model, data)
        with record_function("phase:backward"):
            loss.backward()
        with record_function("phase:optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for h in hooks:
        h.remove()

    events = prof.profiler.kineto_results.events()
    phases = [
        (e.start_ns(), e.start_ns() + e.duration_ns(), e.name().split(":", 1)[1])
        for e in events
        if e.name().startswith("phase:")
    ]
    current = peak = 0
    peak_at = 0
    end_forward = None
    forward_end_ns = next(end for _, end, name in phases if name == "forward")
    for e in sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns()):
        if end_forward is None and e.start_ns() > forward_end_ns:
            end_forward = current
        current += e.nbytes()
        if current > peak:
            peak, peak_at = current, e.start_ns()
    peak_phase = next((n for s, e, n in phases if s <= peak_at <= e), "between phases")
    around = [
        e
        for e in events
        if e.name() != "[memory]" and e.start_ns() <= peak_at <= e.start_ns() + e.duration_ns()
    ]
    peak_ops = [e.name() for e in sorted(around, key=lambda e: e.start_ns())]

    groups: dict[str, int] = defaultdict(int)
    detail: dict[str, int] = defaultdict(int)
    for nbytes, where, dt, shape in saved.values():
        where = re.sub(r"^base_model\.model\.", "", where)
        kind = re.sub(r"layers\.\d+(\.|$)", r"layers.N\1", where)
        kind = re.sub(r"\.(default|base_layer)$", "", kind)
        groups[_group(kind)] += nbytes
        detail[f"{kind} {dt} {shape[-1] if shape else ''}"] += nbytes
    return {
        "model": model_name,
        "dtype": dtype,
        "precision": precision,
        "checkpointing": checkpointing,
        "batch": batch,
        "length": length,
        "weights": weights,
        "lora": lora,
        "optimizer": optim,
        "saved_for_backward": sum(groups.values()),
        "saved_groups": dict(groups),
        "saved_detail": dict(sorted(detail.items(), key=lambda kv: -kv[1])),
        "frozen_parameters_saved_as_themselves": frozen_saved,
        "live_at_end_of_forward": end_forward,
        "peak_over_start": peak,
        "peak_phase": peak_phase,
        "peak_ops": peak_ops,
        "peak_live": weights + lora + optim + peak,
    }


def _group(kind: str) -> str:
    if ".lora_" in kind:
        return "lora branch"
    if "mlp" in kind:
        return "mlp"
    if "self_attn" in kind:
        return "attention"
    if "norm" in kind:
        return "norms"
    if "lm_head" in kind:
        return "lm head / logits"
    if "embed" in kind:
        return "embeddings"
    if kind.endswith("layers.N"):
        return "layer inputs (checkpointing)"
    return kind or "outside modules (loss)"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16-autocast"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--all", action="store_true", help="fp32, bf16 autocast, bf16; +-ckpt")
    ap.add_argument("--out", default=str(ROOT / "docs" / "measured" / "memory_breakdown.json"))
    args = ap.parse_args(argv)
    if not args.all:
        result = step_breakdown(
            args.model, args.dtype, args.precision, args.batch, args.length, args.checkpointing
        )
        print(json.dumps(result, indent=1))
        return result
    runs = [
        step_breakdown(args.model, dtype, precision, args.batch, args.length, ckpt)
        for ckpt in (False, True)
        for dtype, precision in SETTINGS
    ]
    result = {"benchmark": "memory_breakdown", "runs": runs}
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
