"""`fedmedlora check` on the bad-config suite (tests/cli/bad_configs): each mistake is one
line naming the file, the line to edit and the reason; exit status 2; no traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedmedlora.cli.main import app

runner = CliRunner()
BAD = Path(__file__).parent / "bad_configs"

# file -> (line named, words the reason must contain)
CASES = {
    "missing_site_path.yaml": (7, "data.sites.1.train: ", "nowhere.jsonl: no such file or folder"),
    "bad_mapping.yaml": (6, "data.sites.0.mapping: ", "'chia_v2' is neither a built-in"),
    "bad_format.yaml": (6, "data.sites.0.format: ", "unknown format 'jsonlines'"),
    "undetectable_format.yaml": (5, "data.sites.0.train: ", "cannot tell its format"),
    "bad_entity_type.yaml": (6, "data.sites.0.entity_types: ", "['disease'] not in schema"),
    "bad_schema.yaml": (1, "schema: ", "'clinicl' is neither a built-in"),
    "bad_precision.yaml": (3, "model.precision: ", "precision must be one of"),
    "bad_device.yaml": (3, "model.device: ", "unknown device 'tpu'"),
    "min_sites_too_big.yaml": (10, "federation.min_sites: ", "would wait for them forever"),
    "min_updates_too_big.yaml": (
        10,
        "federation.screening.min_updates: ",
        "every round would be skipped",
    ),
    "unknown_key.yaml": (7, "federation.roundz: ", "unknown key 'roundz'"),
    "yaml_syntax.yaml": (6, "not valid YAML", "flow sequence that starts on line 5"),
    "zero_rounds.yaml": (5, "federation.rounds: ", "greater than or equal to 1"),
    "unknown_synthetic_site.yaml": (4, "data.synthetic.sites: ", "['hillside']"),
    "bad_model_folder.yaml": (2, "model.name: ", "is no folder, short name"),
    "encoder_for_generation.yaml": (2, "model.name: ", "needs a causal-lm"),
    "krum_too_few_sites.yaml": (5, "federation.aggregation.krum_f: ", "needs more than 4 sites"),
    "wrong_value_type.yaml": (3, "train.learning_rate: ", "valid number"),
    "bad_target_modules.yaml": (3, "lora.target_modules: ", "['qkv_proj'] name no layer"),
    "not_a_mapping.yaml": (1, "", "a run config must be a mapping"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_bad_config_is_one_clear_line_and_exit_2(name):
    line, where, reason = CASES[name]
    result = runner.invoke(app, ["check", str(BAD / name), "--no-read"])
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
    assert len(errors) >= 1
    hit = [e for e in errors if f"{name}:{line}: {where}" in e and reason in e]
    assert hit, result.output
    assert "Traceback" not in result.output


def test_the_suite_covers_every_file():
    files = {p.name for p in BAD.glob("*.yaml")} - {"good.yaml", "many_problems.yaml"}
    assert files == set(CASES)


def test_every_problem_is_reported_at_once():
    result = runner.invoke(app, ["check", str(BAD / "many_problems.yaml"), "--no-read"])
    assert result.exit_code == 2
    found = re.findall(r"^error: .*many_problems\.yaml:(\d+): ", result.output, re.M)
    lines = {int(n) for n in found}
    # precision, device, missing train file, format, entity type, min_sites, unknown key
    assert lines == {5, 6, 10, 11, 14, 16, 17}
    assert "7 problem(s)" in result.output


def test_a_clean_config_is_ok_and_counts_documents_per_site():
    result = runner.invoke(app, ["check", str(BAD / "good.yaml")])
    assert result.exit_code == 0, result.output
    assert "site north: 3 training and 1 test documents" in result.output
    assert "OK: good: model tiny-random, 2 sites (north, south), 1 round(s)" in result.output


def test_set_overrides_are_checked_and_named(tmp_path):
    result = runner.invoke(
        app, ["check", str(BAD / "good.yaml"), "--no-read", "--set", "federation.min_sites=3"]
    )
    assert result.exit_code == 2
    assert "--set federation.min_sites: federation.min_sites: 3 sites required" in result.output
    result = runner.invoke(
        app, ["check", str(BAD / "good.yaml"), "--no-read", "--set", "federation.rounds=-1"]
    )
    assert result.exit_code == 2
    assert "--set federation.rounds: federation.rounds: Input should be" in result.output


def test_check_writes_nothing(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text((BAD / "good.yaml").read_text().replace("data/", f"{BAD}/data/"))
    before = sorted(tmp_path.rglob("*"))
    assert runner.invoke(app, ["check", str(config)]).exit_code == 0
    assert sorted(tmp_path.rglob("*")) == before


def test_run_and_demo_check_before_anything_starts(tmp_path, monkeypatch):
    import fedmedlora.apps.simulation as simulation

    def never(*args, **kwargs):
        raise AssertionError("the simulation must not start for a bad config")

    monkeypatch.setattr(simulation, "simulate", never)
    run = runner.invoke(app, ["run", str(BAD / "many_problems.yaml"), "--out", str(tmp_path)])
    assert run.exit_code == 2 and "7 problems" in run.output
    assert "many_problems.yaml:16: federation.min_sites" in run.output
    demo = runner.invoke(app, ["demo", "--out", str(tmp_path), "--set", "model.device=tpu"])
    assert demo.exit_code == 2 and "--set model.device: model.device: unknown" in demo.output
    assert list(tmp_path.iterdir()) == []


def test_a_deployment_study_config_leaves_the_site_files_to_the_sites():
    args = ["check", str(BAD / "many_problems.yaml"), "--no-site-files"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "missing.jsonl" not in result.output and "brat-standoff" not in result.output
    assert "many_problems.yaml:14: data.sites.1.entity_types" in result.output  # the schema's
    assert "5 problem(s)" in result.output
