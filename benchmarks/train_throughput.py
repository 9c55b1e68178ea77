"""Local training throughput: fedmedlora's loop vs a plain PEFT + torch loop over the
very same batches, measured alternately in one process (the machine is noisy; compare
the ratio, not absolute numbers).

    .venv/bin/python benchmarks/train_throughput.py [--model smollm2-135m] [--steps 6]

Prints the figures and writes JSON (default benchmarks/results/train_throughput.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from fedmedlora.data.schema import load_schema
from fedmedlora.data.synthetic import generate_site, site_spec
from fedmedlora.model.loading import autocast, resolve_precision
from fedmedlora.model.lora import LoraSettings, adapter_state, load_adapter_state
from fedmedlora.recipe.settings import ModelSettings, Recipe
from fedmedlora.recipe.site_recipe import loaded_model
from fedmedlora.training.batching import batch_order, collate
from fedmedlora.training.examples import build_examples
from fedmedlora.training.loop import TrainSettings, train_steps


def plain_loop(model, batches, lr: float, device, precision: str) -> float:
    """The reference: what anyone would write with PEFT and torch alone."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    began = time.perf_counter()
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(precision, device):
            loss = model(**batch).loss
        loss.float().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    return time.perf_counter() - began


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = ap.parse_args()

    recipe = Recipe(
        model=ModelSettings(name=args.model, precision=args.precision),
        lora=LoraSettings(rank=16, dropout=0.0),
    )
    lm = loaded_model(recipe)
    precision = resolve_precision(args.precision, lm.device)
    schema = load_schema()
    docs = generate_site("riverside", 40, seed=0)
    examples = build_examples(
        docs, site_spec("riverside"), schema, lm.tokenizer, max_chunk_tokens=48
    ).examples
    settings = TrainSettings(
        learning_rate=5e-4,
        batch_size=args.batch_size,
        local_steps=args.steps,
        warmup_steps=0,
        min_lr_ratio=1.0,
    )
    lengths = [len(e) for e in examples]
    order = list(batch_order(len(examples), args.batch_size, args.steps, seed=1, lengths=lengths))
    batches = [collate([examples[i] for i in b], lm.tokenizer.pad_token_id) for b in order]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    initial = adapter_state(lm.model)

    # one warm-up step each, unmeasured
    plain_loop(lm.model, batches[:1], settings.learning_rate, lm.device, precision)
    load_adapter_state(lm.model, initial)
    times: dict[str, list[float]] = {"plain": [], "fedmedlora": []}
    for _ in range(args.repeats):
        load_adapter_state(lm.model, initial)
        times["plain"].append(
            plain_loop(lm.model, batches, settings.learning_rate, lm.device, precision)
        )
        load_adapter_state(lm.model, initial)
        stats = train_steps(
            lm.model,
            examples,
            settings,
            pad_id=lm.tokenizer.pad_token_id,
            start_step=0,
            total_steps=args.steps,
            seed=1,
            device=lm.device,
            precision=precision,
        )
        assert stats.tokens == tokens, "the two loops must see the same batches"
        times["fedmedlora"].append(stats.seconds)

    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "train_throughput",
        "model": args.model,
        "precision": precision,
        "device": str(lm.device),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "tokens_per_run": tokens,
        "seconds": times,
        "seconds_per_step": {k: v / args.steps for k, v in med.items()},
        "tokens_per_second": {k: tokens / v for k, v in med.items()},
        "ratio_fedmedlora_over_plain_time": med["fedmedlora"] / med["plain"],
    }
    print(
        f"model {args.model} ({precision}, {lm.device}, {result['threads']} threads), "
        f"{args.steps} steps x batch {args.batch_size}, {tokens} tokens per run"
    )
    for k in times:
        print(
            f"  {k:11s} {result['seconds_per_step'][k]:.2f} s/step  "
            f"{result['tokens_per_second'][k]:.0f} tokens/s  runs {times[k]}"
        )
    print(f"  time ratio fedmedlora / plain: {result['ratio_fedmedlora_over_plain_time']:.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
