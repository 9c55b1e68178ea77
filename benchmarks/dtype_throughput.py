"""LoRA training speed by base-model dtype, side by side in one process: fp32 weights in
fp32, fp32 weights under bf16 autocast (the `precision: auto` default on a CPU with
AVX512-BF16), and bf16 weights. The settings take turns step by step over the very same
batches, so a noisy, shared machine slows all of them alike: compare the ratios.

    .venv/bin/python benchmarks/dtype_throughput.py [--model smollm2-135m] [--rounds 4]
    python benchmarks/dtype_throughput.py --device cuda --batch 32 --out OUT.json  # a GPU

Prints tokens/s per setting and writes docs/measured/dtype_throughput.json.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from fedmedlora.data.schema import load_schema
from fedmedlora.data.synthetic import generate_site, site_spec
from fedmedlora.model.loading import load_causal_lm, load_tokenizer
from fedmedlora.model.lora import LoraSettings, add_lora
from fedmedlora.training.examples import build_examples
from fedmedlora.training.loop import TrainSettings, train_steps
from measuring import write_result  # beside this script

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "fp32 weights, fp32": ("fp32", "fp32"),
    "fp32 weights, bf16 autocast": ("fp32", "bf16-autocast"),
    "bf16 weights, bf16 autocast": ("bf16", "bf16-autocast"),
}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=4, help="turns per setting")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cuda: the same turns on a GPU")
    ap.add_argument("--out", default=str(ROOT / "docs" / "measured" / "dtype_throughput.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tok = load_tokenizer(args.model)
    examples = build_examples(
        generate_site("lakeside", 8, seed=1), site_spec("lakeside"), load_schema(), tok, 48
    ).examples
    models = {
        name: add_lora(
            load_causal_lm(args.model, dtype=dtype), LoraSettings(dropout=0.0), seed=0
        ).to(device)
        for name, (dtype, _) in SETTINGS.items()
        if dtype == "bf16" or name.startswith("fp32 weights, fp32")
    }
    models["fp32 weights, bf16 autocast"] = models["fp32 weights, fp32"]  # same weights
    speeds: dict[str, list[float]] = {name: [] for name in SETTINGS}
    losses: dict[str, list[float]] = {name: [] for name in SETTINGS}
    settings = TrainSettings(
        learning_rate=1e-9, batch_size=args.batch, local_steps=1, warmup_steps=0
    )  # ~no update: every turn trains on the same weights
    for turn in range(args.rounds + 1):  # turn 0 warms up (one-off allocations, kernels)
        for name, (_, precision) in SETTINGS.items():
            stats = train_steps(
                models[name],
                examples,
                settings,
                pad_id=tok.pad_token_id,
                start_step=0,
                total_steps=1,
                seed=turn,
                device=device,
                precision=precision,
            )
            if turn:
                speeds[name].append(stats.tokens / stats.seconds)
                losses[name].append(stats.mean_loss)
    base = statistics.median(speeds["fp32 weights, fp32"])
    result = {
        "benchmark": "dtype_throughput",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": args.threads,
            "avx512_bf16": "avx512_bf16" in Path("/proc/cpuinfo").read_text(),
        },
        "settings": {"model": args.model, "batch": args.batch, "turns": args.rounds},
        "tokens_per_s": {k: statistics.median(v) for k, v in speeds.items()},
        "speedup_vs_fp32": {k: statistics.median(v) / base for k, v in speeds.items()},
        "all_tokens_per_s": speeds,
        "mean_loss": {k: statistics.fmean(v) for k, v in losses.items()},
    }
    for name in SETTINGS:
        print(
            f"{name:30s} {result['tokens_per_s'][name]:7.0f} tokens/s "
            f"({result['speedup_vs_fp32'][name]:.2f}x fp32), loss {result['mean_loss'][name]:.4f}"
        )
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
