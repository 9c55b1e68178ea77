"""`fedmedlora plan`: memory and traffic from a run config and a config.json only."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fedmedlora.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
LLAMA_8B = ROOT / "tests" / "fixtures" / "model_configs" / "llama-3.1-8b"
runner = CliRunner()


def test_plan_of_the_paper_config_prints_memory_and_traffic():
    result = runner.invoke(
        app,
        ["plan", str(ROOT / "configs" / "paper-8b-qlora.yaml"), "--model-config", str(LLAMA_8B)],
    )
    assert result.exit_code == 0, result.output
    assert "8.03B parameters" in result.output and "with checkpointing" in result.output
    assert "full-model FedAvg" in result.output


def test_plan_json_follows_overrides(tmp_path):
    args = ["plan", str(ROOT / "configs" / "paper-8b-qlora.yaml"), "--model-config", str(LLAMA_8B)]
    nf4 = json.loads(runner.invoke(app, [*args, "--json"]).output)
    bf16 = json.loads(
        runner.invoke(app, [*args, "--json", "--set", "model.quantization=none"]).output
    )
    w = lambda p: p["memory_per_site"]["with_checkpointing"]["weights"]  # noqa: E731
    assert bf16["parameters"] == nf4["parameters"] == 8_030_261_248
    assert w(bf16) == 2 * bf16["parameters"] > 2 * w(nf4)
    half = json.loads(
        runner.invoke(
            app, [*args, "--json", "--set", "federation.adapter_wire_dtype=bfloat16"]
        ).output
    )
    assert 2 * half["traffic"]["run_bytes"] == nf4["traffic"]["run_bytes"]


def test_plan_without_a_model_config_offline_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["plan", str(ROOT / "configs" / "paper-8b-qlora.yaml")])
    assert result.exit_code == 2
    assert "--model-config" in result.output
    bad = tmp_path / "config.json"
    bad.write_text("{}")
    result = runner.invoke(
        app, ["plan", str(ROOT / "configs" / "paper-8b-qlora.yaml"), "--model-config", str(bad)]
    )
    assert result.exit_code == 2 and "not a decoder config" in result.output


def test_plan_for_a_cpu_adds_the_allocator_and_for_a_gpu_not():
    args = ["plan", str(ROOT / "configs" / "paper-8b-qlora.yaml"), "--model-config", str(LLAMA_8B)]
    cpu = json.loads(runner.invoke(app, [*args, "--json", "--device", "cpu"]).output)
    gpu = json.loads(runner.invoke(app, [*args, "--json", "--device", "gpu"]).output)
    c, g = (p["memory_per_site"]["with_checkpointing"] for p in (cpu, gpu))
    assert g["allocator"] == 0 and g["total"] == g["live"] == c["live"]
    assert c["total"] > c["live"] and cpu["settings"]["device"] == "cpu"
    table = runner.invoke(app, [*args, "--device", "cpu"]).output
    assert "CPU allocator" in table and "bf16 copies of frozen weights" in table
    bad = runner.invoke(app, [*args, "--device", "tpu"])
    assert bad.exit_code == 2 and "--device must be cpu or gpu" in bad.output


def test_the_paper_config_holds_the_papers_settings():
    from fedmedlora.config import load_config

    cfg = load_config(ROOT / "configs" / "paper-8b-qlora.yaml")
    m, lora, train = cfg.model, cfg.lora, cfg.train
    assert (m.dtype, m.quantization, m.precision) == ("bf16", "nf4", "bf16-autocast")
    assert (lora.rank, lora.alpha, train.learning_rate) == (16, 64, 2e-4)
    assert sorted(lora.target_modules) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    assert cfg.federation.rounds == 3 and train.gradient_checkpointing
    assert cfg.simulation.client_gpus == 1  # one GPU per hospital
