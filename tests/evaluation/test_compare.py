"""`fedmedlora compare` on runs written by the real recorder: one table, one plot, and
a clear refusal for runs scored on other sites or types."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedmedlora.cli.main import app
from fedmedlora.config import load_config
from fedmedlora.evaluation.metrics import Scores
from fedmedlora.evaluation.results import RunRecorder

runner = CliRunner()


def write_run(
    out: Path, method: str, tp: int, sites=("north", "south"), south_types=("problem", "drug")
) -> dict:
    """A two-round run as run_federation records it, with `tp` true positives per site
    after round 2 (of 10 gold problems each)."""
    data = out.parent / "data"  # the same notes for every run
    lines = "".join(f"    - {{name: {s}, train: {data / s}.jsonl}}\n" for s in sites)
    lines = lines.replace(
        f"{{name: south, train: {data / 'south'}.jsonl}}",
        f"{{name: south, train: {data / 'south'}.jsonl, entity_types: [{', '.join(south_types)}]}}",
    )
    out.mkdir(parents=True)
    (out / "run.yaml").write_text(
        f"name: {out.name}\nfederation: {{rounds: 2, aggregation: {{method: {method}}}}}\n"
        f"data:\n  sites:\n{lines}"
    )
    config = load_config(out / "run.yaml")
    recorder = RunRecorder(
        out,
        run={"name": config.name, "rounds": 2, "sites": list(sites),
             "config": config.model_dump(mode="json", by_alias=True)},
        communication={"adapter_bytes": 1000, "full_model_bytes": 10**6, "sites": len(sites)},
    )  # fmt: skip
    for rnd, hits in ((0, 0), (1, tp // 2), (2, tp)):
        counts = {"entity/strict/problem/tp": hits, "entity/strict/problem/fn": 10 - hits}
        counts |= {"entity/lenient/problem/tp": hits + 1, "entity/lenient/problem/fn": 9 - hits}
        recorder.evaluated(rnd, {s: Scores.from_counts(counts) for s in sites})
    per = {"train": {"down": 2000, "up": 2000}, "evaluate": {"down": 2000, "up": 100}}
    recorder.traffic({1: per, 2: per})
    return recorder.finish()


def test_compare_writes_one_table_and_one_plot(tmp_path):
    a = write_run(tmp_path / "fedavg", "fedmedlora", tp=4)
    b = write_run(tmp_path / "plus", "fedmedlora+", tp=8)
    runs = [str(tmp_path / "fedavg"), str(tmp_path / "plus")]
    result = runner.invoke(app, ["compare", *runs, "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "c" / "compare.md").read_text()
    assert (tmp_path / "c" / "compare_f1.png").stat().st_size > 10_000
    strict = [a["final"]["micro"]["entity_strict_f1"], b["final"]["micro"]["entity_strict_f1"]]
    assert strict == pytest.approx([4 / 7, 8 / 9])  # P = 1, R = tp/10
    assert f"| entity strict f1 | {strict[0]:.3f} | {strict[1]:.3f} |" in md
    lenient = b["final"]["sites"]["south"]["entity_lenient_f1"]
    assert f"| south | {a['final']['sites']['south']['entity_strict_f1']:.3f} / " in md
    assert f"{strict[1]:.3f} / {lenient:.3f} |" in md
    assert "| bytes in all | 11.9 KiB | 11.9 KiB |" in md  # 2 rounds x 6100 bytes
    # only the settings that differ are listed (Fed-MedLoRA+ holds out validation data),
    # not the run's name; each method owns its settings, so Fed-MedLoRA+'s own knobs show
    # with "–" for the run whose method has none
    assert "| `federation.aggregation.method` | fedmedlora | fedmedlora+ |" in md
    assert "| `train.validation_fraction` | 0.0 | 0.1 |" in md
    assert "| `federation.aggregation.temperature` | – | 0.5 |" in md
    assert "| `federation.aggregation.size_mix` | – | 0.0 |" in md
    assert "`name`" not in md and md.count("| `") == 6
    assert "fedmedlora+" in result.output  # the table is shown too


def test_intervals_are_shown_where_a_run_has_them(tmp_path):
    write_run(tmp_path / "a", "fedmedlora", tp=4)
    write_run(tmp_path / "b", "fedmedlora", tp=4)
    path = tmp_path / "b" / "results.json"
    data = json.loads(path.read_text())
    data["final"]["micro"]["entity_strict_f1_ci"] = [0.41, 0.69]
    path.write_text(json.dumps(data))
    result = runner.invoke(
        app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")]
    )
    assert result.exit_code == 0, result.output
    md = (tmp_path / "c" / "compare.md").read_text()
    assert "| entity strict f1 | 0.571 | 0.571 [0.410, 0.690] |" in md
    assert "None: the runs share every setting." in md


@pytest.mark.parametrize(
    ("other", "why"),
    [
        ({"sites": ("north", "east")}, "sites ['north', 'south'] vs ['east', 'north']"),
        (
            {"south_types": ("problem",)},
            "site south annotates entity types ['problem', 'drug'] vs ['problem']",
        ),
    ],
)
def test_runs_on_other_sites_or_types_are_refused_by_name(tmp_path, other, why):
    write_run(tmp_path / "a", "fedmedlora", tp=4)
    write_run(tmp_path / "b", "fedmedlora", tp=4, **other)
    result = runner.invoke(
        app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")]
    )
    assert result.exit_code == 2
    assert "are not comparable" in result.output and why in result.output
    assert not (tmp_path / "c").exists()  # nothing half-written


def test_a_folder_that_is_not_a_run_is_named(tmp_path):
    write_run(tmp_path / "a", "fedmedlora", tp=4)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "results.json").write_text('{"run": {},\n "rounds": [}\n')
    for other, why in ((tmp_path / "none", "not a run folder (no results.json)"),
                       (tmp_path / "b", "results.json:2: not valid JSON")):  # fmt: skip
        result = runner.invoke(app, ["compare", str(tmp_path / "a"), str(other)])
        assert result.exit_code == 2 and why in result.output, result.output
    alone = runner.invoke(app, ["compare", str(tmp_path / "a")])
    assert alone.exit_code == 2 and "at least two run folders" in alone.output
