"""How close `fedmedlora plan`'s memory estimate is to a real LoRA training step on CPU,
and bf16 vs fp32 training speed side by side.

Each setting runs in a fresh process: imports first, then the resident memory is read
(the baseline: interpreter, torch, transformers), then the model is loaded, the peak
counter is reset (Linux /proc/self/clear_refs, so the loader's transient copies are not
counted), and `steps` optimizer steps run through the project's own loop on full-length
windows whose second half is target. Measured = peak RSS during training - baseline:
what the estimate claims to cover (weights, adapter, optimizer, activations, logits).

    .venv/bin/python benchmarks/plan_accuracy.py [--model smollm2-135m] [--batch 4] [--length 128]

Prints the figures and writes docs/measured/plan_accuracy.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from measuring import proc_status, write_result  # beside this script

ROOT = Path(__file__).resolve().parents[1]


def measure(
    model: str,
    dtype: str,
    precision: str,
    batch: int,
    length: int,
    steps: int,
    checkpointing: bool,
    live: bool = False,
) -> dict:
    """One setting, in this process (call it in a fresh one). `live`: the peak of live
    tensors (model, adapter, optimizer state, activations) instead of resident memory."""
    import torch

    from fedmedlora.model.loading import load_causal_lm
    from fedmedlora.model.lora import LoraSettings, add_lora
    from fedmedlora.training.examples import Example
    from fedmedlora.training.loop import TrainSettings, train_steps

    torch.set_num_threads(1)
    gc.collect()
    baseline = proc_status("VmRSS")
    base = load_causal_lm(model, dtype=dtype, gradient_checkpointing=checkpointing)
    lora = LoraSettings()
    wrapped = add_lora(base, lora, seed=0)
    vocab = base.config.vocab_size
    g = torch.Generator().manual_seed(0)
    half = length // 2
    examples = [
        Example(
            torch.randint(3, vocab, (length - half,), generator=g).tolist(),
            torch.randint(3, vocab, (half,), generator=g).tolist(),
        )
        for _ in range(batch * steps)
    ]
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current RSS
    loaded = proc_status("VmRSS")

    def train():
        return train_steps(
            wrapped,
            examples,
            TrainSettings(batch_size=batch, local_steps=steps, warmup_steps=0),
            pad_id=0,
            start_step=0,
            total_steps=steps,
            seed=0,
            device=torch.device("cpu"),
            precision=precision,
        )

    if live:
        stats, live_peak = live_tensor_peak(wrapped, train)
        return {
            "dtype": dtype,
            "precision": precision,
            "checkpointing": checkpointing,
            "measured": live_peak,
            "tokens_per_s": None,  # the profiler slows the step; not a speed figure
            "loss": stats.mean_loss,
        }
    stats = train()
    peak = proc_status("VmHWM")
    return {
        "dtype": dtype,
        "precision": precision,
        "checkpointing": checkpointing,
        "baseline_rss": baseline,
        "after_load_rss": loaded,
        "peak_rss": peak,
        "measured": peak - baseline,
        "tokens_per_s": stats.tokens / stats.seconds,
        "seconds": stats.seconds,
        "loss": stats.mean_loss,
    }


def live_tensor_peak(model, train):
    """(train()'s result, the peak bytes of live tensors while it ran): the model's
    storages, plus the running sum of every allocation and free torch's CPU allocator
    reported to the profiler during training. This is what the estimate counts, and what
    a GPU's `max_memory_allocated` reports there."""
    from torch.profiler import ProfilerActivity, profile

    storages = {}
    for t in [*model.parameters(), *model.buffers()]:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        stats = train()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return stats, sum(storages.values()) + peak


def estimate(
    model: str, dtype: str, precision: str, batch: int, length: int, checkpointing: bool
) -> dict:
    from fedmedlora.model.lora import LoraSettings
    from fedmedlora.model.memory import Shape, plan_memory
    from fedmedlora.model.registry import resolve_model

    lora = LoraSettings()
    shape = Shape.from_file(Path(resolve_model(model)) / "config.json")
    return plan_memory(
        shape,
        dtype=dtype,
        quantization="none",
        rank=lora.rank,
        target_modules=lora.target_modules,
        dropout=lora.dropout,
        batch_size=batch,
        length=length,
        checkpointing=checkpointing,
        autocast_bf16=precision == "bf16-autocast",
        device="cpu",
    ).as_dict()


def compare(run: dict, est: dict) -> dict:
    """The estimate beside a run: resident memory with glibc's default allocator against
    the plan's total for a CPU (live tensors + the allocator's share); live tensors, and
    resident memory under a fixed mmap threshold (which follows them), against its live
    tensors."""
    key = "total" if run["measure"] == "rss-glibc-default" else "live"
    return run | {"estimate": est, "estimate_over_measured": est[key] / run["measured"]}


def reestimate(path: str) -> dict:
    """Recompute the estimates of a result file with the current model/memory.py."""
    result = json.loads(Path(path).read_text())
    s = result["settings"]
    result["runs"] = [
        compare(
            r,
            estimate(
                s["model"], r["dtype"], r["precision"], s["batch"], s["length"], r["checkpointing"]
            ),
        )
        for r in result["runs"]
    ]
    result["reestimated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return result


# What "measured" means, each in its own fresh process:
# - live-tensors: the peak of live tensor bytes (the profiler's allocator events), what the
#   estimate counts and what a GPU's allocator reports as allocated;
# - rss-*: peak resident memory. glibc keeps freed blocks below its mmap threshold in the
#   heap, and by default that threshold grows (up to 32 MiB) each time a larger mmapped
#   block is freed, so a CPU process's RSS also holds memory torch has already freed; a
#   fixed threshold returns larger blocks to the OS at once and RSS follows the live
#   tensors, at the price of page faults on every large allocation (tokens/s below).
MEASURES = {
    "live-tensors": {},
    "rss-glibc-default": {},
    "rss-mmap-1m": {"MALLOC_MMAP_THRESHOLD_": str(2**20)},
    "rss-mmap-64k": {"MALLOC_MMAP_THRESHOLD_": "65536"},
}
SETTINGS = [("fp32", "fp32"), ("fp32", "bf16-autocast"), ("bf16", "bf16-autocast")]


def run_one(args, dtype: str, precision: str, checkpointing: bool, measure_: str) -> dict:
    """`measure` in a fresh interpreter, so no setting inherits another's memory."""
    cmd = [
        sys.executable, __file__, "--one", dtype, precision, "--model", args.model,
        "--batch", str(args.batch), "--length", str(args.length), "--steps", str(args.steps),
    ] + (["--checkpointing"] if checkpointing else []) + (
        ["--live"] if measure_ == "live-tensors" else [])  # fmt: skip
    env = {**os.environ, **MEASURES[measure_]}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1]) | {"measure": measure_}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--checkpointing", action="store_true", help="(with --one)")
    ap.add_argument("--also-checkpointing", action="store_true")
    ap.add_argument("--live", action="store_true", help="(with --one) live tensors, not RSS")
    ap.add_argument("--measures", nargs="+", default=list(MEASURES), choices=list(MEASURES))
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--reestimate", action="store_true",
                    help="only recompute the estimates in --out with the current code")  # fmt: skip
    ap.add_argument("--out", default=str(ROOT / "docs" / "measured" / "plan_accuracy.json"))
    args = ap.parse_args(argv)
    if args.reestimate:
        result = reestimate(args.out)
        write_result(result, args.out)
        return result
    if args.one:
        print(
            json.dumps(
                measure(
                    args.model,
                    *args.one,
                    args.batch,
                    args.length,
                    args.steps,
                    args.checkpointing,
                    args.live,
                )
            )
        )
        return {}
    runs = []
    for ckpt in [False, True] if args.also_checkpointing else [False]:
        for dtype, precision in SETTINGS:
            est = estimate(args.model, dtype, precision, args.batch, args.length, ckpt)
            for measure_ in args.measures:
                got = compare(run_one(args, dtype, precision, ckpt, measure_), est)
                runs.append(got)
                print(
                    f"{dtype:4s} {precision:13s} ckpt={ckpt!s:5s} {measure_:17s}"
                    f" measured {got['measured'] / 2**20:6.0f} MiB"
                    f"  estimate {got['estimate_over_measured'] * got['measured'] / 2**20:6.0f} MiB"
                    f"  ratio {got['estimate_over_measured']:.2f}"
                    f"  {got['tokens_per_s'] or 0:6.0f} tokens/s",
                    flush=True,
                )
    result = {
        "benchmark": "plan_accuracy",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": 1},
        "settings": {
            "model": args.model,
            "batch": args.batch,
            "length": args.length,
            "steps": args.steps,
        },
        "runs": runs,
    }
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
