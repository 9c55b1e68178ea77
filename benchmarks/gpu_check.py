"""The whole path on one GPU, for when an accelerator is available (about 5 minutes on
one data-centre GPU, budget 8): 3 simulated sites sharing the GPU (a third each), 2
rounds, the tiny model and SmolLM2, each with a bf16 base and an nf4 base (bitsandbytes),
through train, aggregate, evaluate (Flower's Simulation Engine) and `fedmedlora extract`
with the federated adapter. Needs only the repository, the packaged weights and the
installed packages (plus bitsandbytes for nf4; without it those runs are reported as
skipped, with the reason).

    .venv/bin/python benchmarks/gpu_check.py [--out runs/gpu_check] [--models tiny-random]

Prints one line per run and writes docs/measured/gpu_check.json (seconds, micro F1
zero-shot and after the last round, adapter bytes, the driver's peak GPU memory). Exit
status 1 if any run failed. `--device cpu --quick --models tiny-random` walks the same
path on a CPU at the smallest sizes (a smoke test of this script, a few minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 8 * 60


def _bnb_reason() -> str | None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        return f"bitsandbytes not installed ({exc})"
    return None


# --quick: the same path (3 sites, 2 rounds, train, aggregate, evaluate, extract) at a
# size a shared CPU walks in minutes: a smoke test of this script, not a measurement.
QUICK = {
    "train.local_steps": 1,
    "train.batch_size": 2,
    "data.synthetic.train_docs": 4,
    "data.synthetic.test_docs": 1,
    "federation.evaluate_zero_shot": False,
    "generation.max_new_tokens": 16,
    "task.max_chunk_tokens": 48,
}


def one_run(model: str, base: str, out: Path, device: str = "cuda", quick: bool = False) -> dict:
    import torch
    from typer.testing import CliRunner

    from fedmedlora.apps.simulation import simulate
    from fedmedlora.cli.main import app
    from fedmedlora.config import load_config

    dtype, quantization = ("bf16", "none") if base == "bf16" else ("bf16", "nf4")
    overrides = {
        "name": f"gpu-{model}-{base}",
        "model.name": model,
        "model.dtype": dtype,
        "model.quantization": quantization,
        "model.precision": "bf16-autocast",
        "model.device": device,
        "train.local_steps": 6,
        "train.batch_size": 8,
        "train.gradient_checkpointing": base == "nf4",
        "data.synthetic.train_docs": 24,
        "data.synthetic.test_docs": 3,
        "federation.rounds": 2,
        "federation.evaluate_every": 1,
        "federation.evaluate_zero_shot": True,
        "simulation.client_gpus": 1 / 3 if device == "cuda" else 0,  # 3 sites share 1 GPU
        "simulation.client_cpus": 1,
        "generation.max_new_tokens": 120,
    } | (QUICK if quick else {})
    config = load_config(None, overrides)
    run_dir = out / f"{model}-{base}"
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    results = simulate(config, run_dir)
    trained = time.perf_counter() - began
    # extract: the one inference path, with the federated adapter, on a synthetic note
    notes = run_dir / "notes"
    notes.mkdir(parents=True, exist_ok=True)
    (notes / "note.txt").write_text(
        "Patient started on metformin 500 mg twice daily for type 2 diabetes. Denies chest pain.\n"
    )
    cli = CliRunner().invoke(
        app,
        [
            "extract", "--input", str(notes), "--out", str(run_dir / "extracted.jsonl"),
            "--adapter", str(run_dir / "adapter"), "--device", device,
            "--precision", "bf16-autocast",
            "--max-new-tokens", str(overrides["generation.max_new_tokens"]),
            "--dtype", dtype, "--quantization", quantization,
        ],
    )  # fmt: skip
    if cli.exit_code != 0:
        raise RuntimeError(f"extract failed ({cli.exit_code}): {cli.output[-800:]}")
    return {
        "model": model,
        "base": base,
        "seconds_federation": trained,
        "seconds_total": time.perf_counter() - began,
        "extracted_documents": sum(1 for _ in (run_dir / "extracted.jsonl").open()),
        "communication": results.get("communication", {}).get("adapter_bytes"),
        "zero_shot_micro": (results.get("zero_shot") or {}).get("micro"),
        "final_micro": (results.get("final") or {}).get("micro"),
        # Ray actors are other processes: this is the driver's share (extract); the
        # sites' peaks are in each actor, reported by nvidia-smi while it runs.
        "driver_peak_gpu_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
    }


def _write(args: argparse.Namespace, runs: list[dict], began: float) -> dict:
    import torch

    result = {
        "benchmark": "gpu_check",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else args.device,
        "quick": args.quick,
        "seconds": time.perf_counter() - began,
        "runs": runs,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "runs" / "gpu_check"))
    ap.add_argument("--models", nargs="+", default=["tiny-random", "smollm2-135m"])
    ap.add_argument("--bases", nargs="+", default=["bf16", "nf4"])
    ap.add_argument("--json", help="default: docs/measured/gpu_check.json (quick: under --out)")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test of this script")
    ap.add_argument("--quick", action="store_true", help="the same path, smallest sizes")
    args = ap.parse_args(argv)
    if args.json is None:
        measured = ROOT / "docs" / "measured" / "gpu_check.json"
        args.json = str(Path(args.out) / "gpu_check.json" if args.quick else measured)

    import torch

    import fedmedlora.model  # noqa: F401  (before bitsandbytes: its import noise stays quiet)
    from fedmedlora.cli.common import quiet_libraries

    quiet_libraries()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible: this check needs a GPU", file=sys.stderr)
        return 2
    began = time.perf_counter()
    runs, failed = [], False
    for model in args.models:
        for base in args.bases:
            if time.perf_counter() - began > BUDGET_S:
                runs.append({"model": model, "base": base, "skipped": "time budget spent"})
                continue
            if base == "nf4" and (reason := _bnb_reason()):
                runs.append({"model": model, "base": base, "skipped": reason})
                print(f"{model:14s} {base:5s} skipped: {reason}", flush=True)
                continue
            try:
                run = one_run(model, base, Path(args.out), args.device, args.quick)
            except Exception as exc:  # report every run, then fail at the end
                failed = True
                run = {"model": model, "base": base, "error": repr(exc)}
                traceback.print_exc()
            runs.append(run)
            print(f"{model:14s} {base:5s} {json.dumps(run)[:300]}", flush=True)
            _write(args, runs, began)  # after every run: a killed check keeps what it did
    result = _write(args, runs, began)
    print(f"{result['seconds']:.0f}s in all; wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
