"""The `fedmedlora` commands as a user runs them: outputs, and clear errors for mistakes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedmedlora.cli.main import app
from fedmedlora.data.formats.brat import read_brat
from fedmedlora.data.formats.jsonl import load_jsonl, write_jsonl
from tests.fixtures import notes

runner = CliRunner()
FEDMEDLORA = str(Path(sys.executable).parent / "fedmedlora")


def test_score_prints_strict_and_lenient_json(tmp_path):
    gold = notes(3)
    pred = [gold[0], gold[1].model_copy(update={"entities": gold[1].entities[:2], "relations": []})]
    write_jsonl(gold, tmp_path / "gold.jsonl")
    write_jsonl(pred, tmp_path / "pred.jsonl")
    result = runner.invoke(
        app,
        ["score", "--gold", str(tmp_path / "gold.jsonl"), "--pred", str(tmp_path / "pred.jsonl")],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout[result.stdout.index("{") :])
    strict = out["entity"]["strict"]["micro"]
    assert (strict["tp"], strict["fp"], strict["fn"]) == (8, 0, 10)
    assert out["missing_predictions"] == ["a-2"]
    assert out["entity"]["lenient"]["per_type"]["drug"]["tp"] == 2


def test_score_reports_a_broken_file_by_line(tmp_path):
    write_jsonl(notes(1), tmp_path / "gold.jsonl")
    (tmp_path / "pred.jsonl").write_text('{"schema_version": 1, "id": "x", "text": "a"}\n{oops\n')
    result = runner.invoke(
        app,
        ["score", "--gold", str(tmp_path / "gold.jsonl"), "--pred", str(tmp_path / "pred.jsonl")],
    )
    assert result.exit_code == 2
    assert f"{tmp_path / 'pred.jsonl'}:2: not valid JSON" in result.output
    assert "Traceback" not in result.output


def test_extract_writes_jsonl_and_brat_from_text_files(tmp_path):
    notes_dir = tmp_path / "notes"
    notes_dir.mkdir()
    for doc in notes(2):
        (notes_dir / f"{doc.id}.txt").write_text(doc.text)
    result = runner.invoke(
        app,
        [
            "extract",
            "--model",
            "tiny-random",
            "--input",
            str(notes_dir),
            "--out",
            str(tmp_path / "pred.jsonl"),
            "--brat",
            str(tmp_path / "brat"),
            "--max-new-tokens",
            "16",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "windows/s" in result.output and "forward passes per token" in result.output
    assert "text_drift" not in result.output and "unclosed_tag" not in result.output
    preds = load_jsonl(tmp_path / "pred.jsonl")
    assert [p.id for p in preds] == ["a-0", "a-1"]
    back = read_brat(tmp_path / "brat")
    assert not back.problems and sorted(d.id for d in back.documents) == ["a-0", "a-1"]


def test_extract_errors_are_one_clear_line(tmp_path):
    missing = runner.invoke(
        app,
        [
            "extract",
            "--model",
            "tiny-random",
            "--input",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "o.jsonl"),
        ],
    )
    assert missing.exit_code == 2 and "no such file or folder" in missing.output
    (tmp_path / "n.txt").write_text("No fever.")
    bad_adapter = runner.invoke(
        app,
        [
            "extract",
            "--adapter",
            str(tmp_path),
            "--input",
            str(tmp_path / "n.txt"),
            "--out",
            str(tmp_path / "o.jsonl"),
        ],
    )
    assert bad_adapter.exit_code == 2 and "not a PEFT adapter folder" in bad_adapter.output
    bad_type = runner.invoke(
        app,
        [
            "extract",
            "--model",
            "tiny-random",
            "--input",
            str(tmp_path / "n.txt"),
            "--out",
            str(tmp_path / "o.jsonl"),
            "--entity-type",
            "disease",
        ],
    )
    assert bad_type.exit_code == 2 and "disease" in bad_type.output


def test_run_config_errors_name_the_file_and_field(tmp_path):
    missing = runner.invoke(app, ["run", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 2 and "none.yaml: config file not found" in missing.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: tiny-random}\ntrain: {learning_rate: -1, epochs: 3}\n")
    result = runner.invoke(app, ["run", str(bad)])
    assert result.exit_code == 2
    assert "bad.yaml: invalid run config" in result.output
    assert "train.learning_rate" in result.output and "train.epochs" in result.output
    wrong_set = runner.invoke(app, ["demo", "--set", "federation.rounds"])
    assert wrong_set.exit_code == 2 and "KEY=VALUE" in wrong_set.output


def test_run_end_to_end_in_a_fresh_process(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "name: cli\nmodel: {name: tiny-random}\n"
        "train: {local_steps: 2, batch_size: 4}\n"
        "generation: {batch_size: 8, max_new_tokens: 16}\n"
        "data: {synthetic: {sites: [riverside, lakeside], train_docs: 4, test_docs: 2}}\n"
        "federation: {rounds: 1}\n"
    )
    proc = subprocess.run(
        [FEDMEDLORA, "run", str(config), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done in" in proc.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["final"]["sites"]) == {"riverside", "lakeside"}
    for name in ("report.md", "f1_per_round.png", "bytes_per_round.png"):
        assert (tmp_path / "out" / name).is_file()


def _one_site_run(folder: Path, local_steps: int, max_new_tokens: int) -> Path:
    """run.yaml for one tiny-random site "north" of 8 notes, a quarter held out."""
    write_jsonl(notes(8, "north"), folder / "north.jsonl")
    (folder / "run.yaml").write_text(
        f"model: {{name: tiny-random}}\ntrain: {{local_steps: {local_steps}, batch_size: 4}}\n"
        f"generation: {{max_new_tokens: {max_new_tokens}}}\n"
        "data:\n  sites:\n    - {name: north, train: north.jsonl, test_fraction: 0.25}\n"
    )
    return folder / "run.yaml"


def test_personalize_compares_federated_and_personalized_at_one_site(tmp_path):
    from fedmedlora.config import load_config
    from fedmedlora.model.lora import save_adapter
    from fedmedlora.recipe.site_recipe import initial_adapter, loaded_model

    _one_site_run(tmp_path, local_steps=2, max_new_tokens=16)
    recipe = load_config(tmp_path / "run.yaml").recipe()
    save_adapter(loaded_model(recipe).model, initial_adapter(recipe), tmp_path / "fed")
    args = ["personalize", str(tmp_path / "run.yaml"), "--adapter", str(tmp_path / "fed")]
    track = ["--track", "tensorboard"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "p"), "--site", "north", *track])
    assert result.exit_code == 0, result.output
    out = json.loads((tmp_path / "p" / "personalize.json").read_text())
    assert out["site"] == "north" and (out["head_steps"], out["full_steps"]) == (2, 2)
    assert len(out["train_loss"]) == 2
    assert 0 <= out["personalized"]["entity_strict_f1"] <= 1
    # the site's own tracker holds the same numbers: step 0 federated, step 1 personalized
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "p" / "tensorboard"))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("north/entity_lenient_f1")}
    assert logged == pytest.approx(
        {0: out["federated"]["entity_lenient_f1"], 1: out["personalized"]["entity_lenient_f1"]}
    )
    losses = [events.Scalars(f"train/phase{i}-loss")[0].value for i in (1, 2)]
    assert losses == pytest.approx(out["train_loss"], rel=1e-6)
    assert (tmp_path / "p" / "personal_adapter" / "adapter_model.safetensors").is_file()
    both = runner.invoke(app, [*args, "--out", "x", "--site", "a", "--site-config", "b.yaml"])
    assert both.exit_code == 2 and "exactly one of --site" in both.output
    bad = runner.invoke(app, ["personalize", str(tmp_path / "run.yaml"), "--adapter",
                              str(tmp_path), "--out", "x", "--site", "north"])  # fmt: skip
    assert bad.exit_code == 2 and "not a PEFT adapter folder" in bad.output


def _fedex_like_adapter(model, folder: Path) -> dict:
    """A saved adapter with a FedEx-LoRA base residual on one weight; returns the residual."""
    import torch

    from fedmedlora.model.lora import adapter_state, save_adapter

    name = "base_model.model.model.layers.0.mlp.up_proj.base_layer.weight"
    weight = dict(model.named_parameters())[name]
    residual = {name: torch.full_like(weight, 0.125)}
    save_adapter(model, adapter_state(model), folder, base_residual=residual)
    return residual


def test_extract_runs_a_fedex_adapter_on_its_offset_base_weights(tmp_path, monkeypatch):
    import torch

    import fedmedlora.evaluation.inference as inference
    from fedmedlora.model.loading import load_causal_lm
    from fedmedlora.model.lora import BASE_RESIDUAL, LoraSettings, add_lora

    model = add_lora(load_causal_lm("tiny-random"), LoraSettings(rank=2))
    residual = _fedex_like_adapter(model, tmp_path / "adapter")
    ((name, offset),) = residual.items()
    pretrained = dict(model.named_parameters())[name].detach().clone()
    seen, real = {}, inference.extract

    def spy(lm, *args, **kwargs):
        seen["weight"] = dict(lm.named_parameters())[name].detach().clone()
        return real(lm, *args, **kwargs)

    monkeypatch.setattr(inference, "extract", spy)
    (tmp_path / "n.txt").write_text("No fever.")
    args = ["extract", "--input", str(tmp_path / "n.txt"), "--adapter", str(tmp_path / "adapter")]
    args += ["--out", str(tmp_path / "o.jsonl"), "--max-new-tokens", "8"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert torch.equal(seen["weight"], pretrained + offset)

    from safetensors.torch import save_file

    save_file({name: torch.zeros(2, 2)}, str(tmp_path / "adapter" / BASE_RESIDUAL))
    bad = runner.invoke(app, [*args[:-4], "--out", str(tmp_path / "o2.jsonl")])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert BASE_RESIDUAL in bad.output and "offset (2, 2)" in bad.output
    assert not (tmp_path / "o2.jsonl").exists()


def test_personalize_starts_from_a_fedex_adapter_s_offset_base_and_keeps_its_residual(tmp_path):
    import torch
    from safetensors.torch import load_file

    from fedmedlora.config import load_config
    from fedmedlora.model.lora import BASE_RESIDUAL, offset_base_weights
    from fedmedlora.recipe.site_recipe import loaded_model

    _one_site_run(tmp_path, local_steps=1, max_new_tokens=8)
    model = loaded_model(load_config(tmp_path / "run.yaml").recipe()).model
    residual = _fedex_like_adapter(model, tmp_path / "fed")
    ((name, offset),) = residual.items()
    pretrained = dict(model.named_parameters())[name].detach().clone()
    args = ["personalize", str(tmp_path / "run.yaml"), "--adapter", str(tmp_path / "fed")]
    try:
        result = runner.invoke(app, [*args, "--out", str(tmp_path / "p"), "--site", "north"])
        assert result.exit_code == 0, result.output
        # the site's model (loaded once per process) trained on the offset base weight
        assert torch.equal(dict(model.named_parameters())[name], pretrained + offset)
    finally:  # later tests share this process's cached model
        offset_base_weights(model, {name: torch.zeros_like(offset)})
    kept = load_file(str(tmp_path / "p" / "personal_adapter" / BASE_RESIDUAL))
    assert kept.keys() == residual.keys() and torch.equal(kept[name], offset)


def test_data_synthetic_writes_sites_a_supernode_and_a_run_can_read(tmp_path):
    from fedmedlora.config import load_config
    from fedmedlora.data.schema import load_schema
    from fedmedlora.data.site_check import check_site_config
    from fedmedlora.data.sites import load_site, load_source
    from fedmedlora.data.synthetic import generate_site

    result = runner.invoke(
        app,
        [
            "data",
            "synthetic",
            "--out",
            str(tmp_path),
            "--site",
            "northgate",
            "--site",
            "lakeside",
            "--train-docs",
            "5",
            "--test-docs",
            "2",
            "--model",
            "tiny-random",
        ],
    )
    assert result.exit_code == 0, result.output
    schema = load_schema()
    # What a SuperNode reads: its site config, paths relative to that file.
    source = check_site_config(tmp_path / "lakeside" / "site.yaml")
    at_site = load_source(source, schema, seed=0)
    expected = generate_site("lakeside", 7, 0)
    assert [d.id for d in at_site.train] == [d.id for d in expected[:5]]
    assert [d.id for d in at_site.test] == [d.id for d in expected[5:]]
    assert at_site.train[0].entities == expected[0].entities
    assert "test" not in at_site.spec.entity_types  # lakeside does not annotate tests
    # What the server (or `fedmedlora run`) reads: the same sites under their names.
    config = load_config(tmp_path / "run.yaml")
    assert config.model.name == "tiny-random"
    assert [s.name for s in config.data.sites] == ["northgate", "lakeside"]
    in_run = load_site(config.data, "lakeside", schema, seed=0)
    assert [d.id for d in in_run.test] == [d.id for d in at_site.test]
    assert in_run.spec.entity_types == at_site.spec.entity_types

    bad = runner.invoke(
        app, ["data", "synthetic", "--out", str(tmp_path / "x"), "--site", "nowhere"]
    )
    assert bad.exit_code == 2 and "unknown synthetic sites ['nowhere']" in bad.output
    assert not (tmp_path / "x").exists()


def test_score_refuses_other_texts_under_one_id_and_unknown_types(tmp_path):
    gold = notes(3)
    pred = [gold[0], *(d.model_copy(update={"text": d.text + " Seen again."}) for d in gold[1:])]
    write_jsonl(gold, tmp_path / "gold.jsonl")
    write_jsonl(pred, tmp_path / "pred.jsonl")
    args = ["score", "--gold", str(tmp_path / "gold.jsonl"), "--pred"]
    result = runner.invoke(app, [*args, str(tmp_path / "pred.jsonl")])
    assert result.exit_code == 2
    assert "pred.jsonl: 2 document(s) whose text differs from the gold" in result.output
    assert "a-1, a-2" in result.output and "Traceback" not in result.output
    same = [*args, str(tmp_path / "gold.jsonl")]
    typo = runner.invoke(app, [*same, "--entity-type", "drug", "--entity-type", "drgu"])
    assert typo.exit_code == 2 and "unknown --entity-type 'drgu'" in typo.output
    rel = runner.invoke(app, [*same, "--relation-type", "treats_it"])
    assert rel.exit_code == 2 and "unknown --relation-type 'treats_it'" in rel.output
    fine = runner.invoke(app, [*same, "--entity-type", "drug"])
    assert fine.exit_code == 0, fine.output


def test_extract_checks_adapter_device_and_out_before_loading(tmp_path, monkeypatch):
    import json

    import torch

    import fedmedlora.model.loading as loading
    from fedmedlora.model.lora import LoraSettings, adapter_state, add_lora, save_adapter

    model = add_lora(loading.load_causal_lm("tiny-random"), LoraSettings(rank=2))
    save_adapter(model, adapter_state(model), tmp_path / "adapter")

    def never(*args, **kwargs):
        raise AssertionError("nothing may load before the checks pass")

    monkeypatch.setattr(loading, "load_causal_lm", never)
    monkeypatch.setattr(loading, "load_tokenizer", never)
    (tmp_path / "n.txt").write_text("No fever.")
    base = ["extract", "--input", str(tmp_path / "n.txt"), "--adapter", str(tmp_path / "adapter")]
    out = ["--out", str(tmp_path / "o.jsonl")]

    def fails(*extra: str) -> str:
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and "AssertionError" not in result.output
        return result.output

    assert "is a folder; give the JSONL file" in fails("--out", str(tmp_path))
    assert "folder" in fails("--out", str(tmp_path / "no" / "o.jsonl"))
    assert "unknown device 'tpu'" in fails(*out, "--device", "tpu")
    assert "precision must be one of" in fails(*out, "--precision", "fp16")
    if not torch.cuda.is_available():
        assert "'cuda:1': no such CUDA device" in fails(*out, "--device", "cuda:1")
    config_file = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    assert config["base_model_name_or_path"] == "tiny-random"
    config_file.write_text(json.dumps({**config, "r": 4}))
    wrong_rank = fails(*out)
    assert "adapter does not fit model 'tiny-random'" in wrong_rank and "(rank 4)" in wrong_rank
    config_file.write_text(json.dumps({**config, "target_modules": ["query", "value"]}))
    assert "target modules ['query', 'value'] are not in this model" in fails(*out)
    config_file.write_text(json.dumps(config))
    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    assert "no adapter weights" in fails(*out)
    assert not (tmp_path / "o.jsonl").exists()
