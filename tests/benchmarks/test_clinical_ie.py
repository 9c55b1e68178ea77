"""The clinical IE benchmark: its cell bookkeeping (resume), its variants, the paired
comparisons of its report, and one end-to-end run (tiny budget, tiny LLM)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import clinical_ie  # noqa: E402
import clinical_ie_report as report  # noqa: E402


def args_for(*extra: str):
    return clinical_ie.parser().parse_args(["--skip-bert", *extra])


def test_cells_cover_every_method_and_seed_once():
    cells = clinical_ie.planned_cells(args_for("--seeds", "2", "--k", "0", "5"))
    assert cells[0] == "zero-shot"  # no training, no seed
    assert len(cells) == len(set(cells))
    for seed in (0, 1):
        for method in ("fedmedlora", "centralized", "single-site:chia", "new-site:k5:fed"):
            assert f"{method}@{seed}" in cells
    assert not [c for c in cells if "k0" in c]  # k = 0 is the untrained models' score
    # New-site cells come after the federated adapter they start from.
    assert cells.index("new-site:k5:fed@0") > cells.index("fedmedlora@0")


def test_only_selects_families():
    cells = clinical_ie.planned_cells(args_for("--seeds", "1", "--only", "single-site"))
    assert cells == [f"single-site:{s}@0" for s in clinical_ie.SITES]


def test_a_resumed_run_skips_finished_cells_and_keeps_them(tmp_path):
    args = args_for("--seeds", "1", "--out", str(tmp_path))
    bench = clinical_ie.Bench(tmp_path, args)
    bench.record("zero-shot", {"ncbi_test": {"counts": []}}, began=0.0)
    # Persisted as soon as the cell finished: a kill now loses nothing.
    saved = json.loads((tmp_path / "results.json").read_text())
    assert "zero-shot" in saved["cells"]
    # More seeds on resume: a selection, so allowed; the finished cell is not redone.
    later = clinical_ie.Bench(tmp_path, args_for("--seeds", "2", "--out", str(tmp_path)))
    later.resume(saved)
    todo = clinical_ie.pending(
        clinical_ie.planned_cells(args_for("--seeds", "2")), later.data["cells"]
    )
    assert "zero-shot" not in todo and "fedmedlora@1" in todo


def test_resume_refuses_other_budgets(tmp_path):
    args = args_for("--out", str(tmp_path))
    bench = clinical_ie.Bench(tmp_path, args)
    bench.save()
    saved = json.loads((tmp_path / "results.json").read_text())
    other = clinical_ie.Bench(tmp_path, args_for("--out", str(tmp_path), "--local-steps", "7"))
    with pytest.raises(SystemExit, match="local_steps"):
        other.resume(saved)


def test_resume_refuses_cells_scored_on_other_test_windows(tmp_path):
    args = args_for("--out", str(tmp_path))
    bench = clinical_ie.Bench(tmp_path, args)
    bench.use_sets({"chia": {"windows": 3, "groups": ["a", "a", "b"]}})
    bench.record("zero-shot", {"chia": {"counts": []}}, began=0.0)
    assert bench.data["cells"]["zero-shot"]["commit"] == clinical_ie.code_version()
    saved = json.loads((tmp_path / "results.json").read_text())
    same = clinical_ie.Bench(tmp_path, args)
    same.resume(saved)
    same.use_sets({"chia": {"windows": 3, "groups": ["a", "a", "b"]}})  # rebuilt, identical
    rebuilt = clinical_ie.Bench(tmp_path, args)
    rebuilt.resume(saved)
    with pytest.raises(SystemExit, match=r"test sets differ.*chia"):
        rebuilt.use_sets({"chia": {"windows": 3, "groups": ["a", "b", "b"]}})


def test_sweep_schedules_are_variants_of_the_default():
    names = clinical_ie.variants(
        args_for(
            "--sweep", "--rounds", "4", "--local-steps", "10",
            "--sweep-schedules", "8x5", "4x10", "12x10",
        )
    )  # fmt: skip
    assert {"fedmedlora", "fed:8x5", "fed:12x10", "fed:fedavgm", "fed:plus-mix", "fed:mask"} <= set(
        names
    )
    assert names["fed:exact"] == {"federation.aggregation.method": "exact"}
    assert "fed:4x10" not in names  # the default schedule is the fedmedlora cell itself
    # pooling at the total compute of a schedule with more steps per site (3 x 12 x 10)
    # and pooling at each swept learning rate
    centrals = clinical_ie.central_variants(
        args_for("--sweep", "--rounds", "4", "--local-steps", "10",
                 "--sweep-schedules", "8x5", "12x10", "--sweep-lr", "0.004")
    )  # fmt: skip
    assert centrals == ["centralized:360", "centralized:lr0.004"]
    cells = clinical_ie.planned_cells(
        args_for("--sweep", "--seeds", "1", "--only", "centralized:360")
    )
    assert cells == ["centralized:360@0"]
    # each site alone at a longer schedule's steps per site (12 x 10), none at 8 x 5's 40
    singles = clinical_ie.planned_cells(
        args_for("--sweep", "--seeds", "1", "--only", "single-site",
                 "--sweep-schedules", "8x5", "12x10")
    )  # fmt: skip
    long = [f"single-site:{site}:120@0" for site in clinical_ie.SITES]
    assert singles == [f"single-site:{site}@0" for site in clinical_ie.SITES] + long
    assert names["fed:8x5"] == {"federation.rounds": 8, "train.local_steps": 5}
    assert names["fed:12x10"] == {"federation.rounds": 12, "train.local_steps": 10}
    for bad in ("3by10", "0x10", "x5"):
        with pytest.raises(SystemExit, match="ROUNDSxSTEPS"):
            clinical_ie.variants(args_for("--sweep", "--sweep-schedules", bad))


def test_the_sweep_plot_orders_schedules_by_steps_per_site():
    methods = ("fed:12x10", "fedmedlora", "fed:8x5", "fed:2x20")
    data = _data({m: [[1, 1, 1]] for m in methods}, ["d"])
    for name in clinical_ie.SITES:  # the in-domain sets the sweep's F1 pools
        data["sets"][name] = data["sets"]["bc5cdr"]
        for cell in data["cells"].values():
            cell["sets"][name] = cell["sets"]["bc5cdr"]
    order = [p[0] for p in report.sweep_points(data)]
    # default 2 x 5 = 10 steps; 2x20 and 8x5 have 40 (fewer rounds first), 12x10 120
    assert order == ["fedmedlora", "fed:2x20", "fed:8x5", "fed:12x10"]


def _data(cells: dict[str, dict[str, list]], groups: list[str]) -> dict:
    """A results.json with one in-domain set ("bc5cdr") of the given entity-strict counts."""
    zero = [0] * 3

    def entry(rows):
        return {"sets": {"bc5cdr": {"counts": [r + zero * 3 for r in rows]}}, "seconds": 1}

    return {
        "args": {"bootstrap": 500, "rounds": 2, "local_steps": 5},
        "sets": {"bc5cdr": {"groups": groups}},
        "cells": {c: entry(rows) for c, rows in cells.items()},
    }


def test_comparisons_are_paired_on_documents_and_seeds():
    groups = ["d1", "d1", "d2", "d3"]
    good = [[2, 0, 0], [1, 0, 0], [3, 0, 1], [1, 1, 0]]
    worse = [[1, 1, 1], [1, 0, 0], [2, 1, 2], [0, 1, 1]]
    data = _data(
        {
            "centralized@0": good,
            "centralized@1": good,
            "fedmedlora@0": worse,
            "fedmedlora@1": good,
            "single-site:bc5cdr@0": worse,
            "single-site:chia@0": [[0, 0, 3]] * 4,
        },
        groups,
    )
    got = report.compare(data, "centralized", "fedmedlora", "bc5cdr")
    assert got["runs"] == [2, 2]
    # seed by seed: fed@0 (tp 4, fp 3, fn 4: F1 8/15) - centralized@0 (7, 1, 1: 14/16)
    assert got["per_seed"] == pytest.approx([8 / 15 - 14 / 16, 0.0], abs=1e-4)
    assert "| -0.342, +0.000 |" in report.comparison_row({**got, "comparison": "x"})
    assert got["difference"] < 0 and got["ci95"][1] <= 0  # never better on any resample
    # The best single site is picked by its point F1.
    assert report.best_single_site(data, "bc5cdr") == "single-site:bc5cdr"
    labels = {c["comparison"] for c in report.comparisons(data)}
    assert {"federated - centralized", "federated - best single site"} <= labels


def test_a_one_seed_variant_is_compared_on_its_own_seed():
    """fed:8x5 ran seed 0 only; centralized seeds 0 and 1, whose seed 1 is far better:
    the comparison uses centralized's seed 0, not the two-seed mean."""
    data = _data(
        {
            "centralized@0": [[1, 1, 1]] * 3,
            "centralized@1": [[3, 0, 0]] * 3,
            "fed:8x5@0": [[1, 1, 1]] * 3,
        },
        ["d1", "d2", "d3"],
    )
    got = report.compare(data, "centralized", "fed:8x5", "bc5cdr")
    assert got["runs"] == [1, 1] and got["difference"] == 0.0
    assert report.cell_f1(data, "centralized", "bc5cdr")["f1"] == 0.75  # the cell: both seeds


def test_the_new_site_curve_is_compared_step_by_step_in_k():
    """From k = 0 (the federated adapter itself) to each larger k, paired: whether the
    from-federated F1 rises with k is read from intervals, not from point estimates."""
    good, worse = [[3, 0, 0]] * 3, [[1, 1, 1]] * 3
    data = _data(
        {"fedmedlora@0": good, "new-site:k5:fed@0": worse, "new-site:k10:fed@0": good},
        ["d1", "d2", "d3"],
    )
    data["sets"] = {"ncbi_test": data["sets"].pop("bc5cdr")}
    for cell in data["cells"].values():
        cell["sets"] = {"ncbi_test": cell["sets"].pop("bc5cdr")}
    got = {c["comparison"]: c for c in report.comparisons(data)}
    down = got["new site from federated: k=5 - k=0"]
    assert (down["a"], down["b"]) == ("fedmedlora", "new-site:k5:fed")
    assert down["difference"] < 0
    assert got["new site from federated: k=10 - k=5"]["difference"] > 0
    assert "new site from federated: k=10 - k=0" not in got  # consecutive steps only


def test_cell_f1_averages_seeds():
    data = _data({"fedmedlora@0": [[1, 0, 0]], "fedmedlora@1": [[0, 1, 1]]}, ["d"])
    assert report.cell_f1(data, "fedmedlora", "bc5cdr")["f1"] == 0.5


@pytest.mark.slow
def test_benchmark_fills_every_protocol_and_method(tmp_path, shared_data):
    out = tmp_path / "bench"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "clinical_ie.py"),
        "--data", str(shared_data), "--out", str(out), "--model", "tiny-random",
        "--seeds", "1", "--rounds", "1", "--local-steps", "1", "--bert-steps", "1",
        "--eval-windows", "4", "--new-site-steps", "1", "--k", "0", "5",
        "--max-new-tokens", "24",  # a random model writes to the cap: keep generation short
        "--max-train-docs", "12",  # building examples from every document is the cost
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    expected = {"zero-shot", "fedmedlora@0", "centralized@0", "bert-centralized@0", "bert-fed@0"}
    expected |= {"new-site:k5:base@0", "new-site:k5:fed@0"}
    expected |= {
        f"{p}:{s}@0" for p in ("single-site", "bert-single-site") for s in clinical_ie.SITES
    }
    assert set(data["cells"]) == expected
    sets = {*clinical_ie.SITES, *clinical_ie.EXTERNAL}
    for cell, entry in data["cells"].items():
        want = {"ncbi_test"} if cell.startswith("new-site") else sets
        assert set(entry["sets"]) == want
        for name in want:
            assert len(entry["sets"][name]["counts"]) == data["sets"][name]["windows"]
    for start in ("base", "fed"):  # 1 epoch over 5 documents' windows: more than 1 step
        cell = data["cells"][f"new-site:k5:{start}@0"]
        assert cell["epochs"] == 1.0 and cell["steps"] > 1
    text = (out / "report.md").read_text()
    assert "federated - centralized" in text and "new site k=5" in text
    for name in ("in_domain.png", "new_site.png", "summary.json"):
        assert (out / name).is_file()
    # A second run with --resume has nothing left to do.
    again = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 cells to run" in again.stdout


def test_a_variant_measured_with_other_settings_is_measured_again():
    done = {"fed:fedavgm@0": {"overrides": {"federation.aggregation.server_momentum": 0.5}},
            "centralized@0": {}}  # fmt: skip
    args = args_for(
        "--seeds", "1", "--sweep", "--sweep-schedules", "2x20", "--server-momentum", "0.9"
    )
    todo = clinical_ie.pending(["fed:fedavgm@0", "centralized@0"], done, clinical_ie.variants(args))
    assert todo == ["fed:fedavgm@0"]
    same = clinical_ie.variants(
        args_for("--sweep", "--sweep-schedules", "2x20", "--server-momentum", "0.5")
    )
    done["fed:fedavgm@0"]["overrides"] = same["fed:fedavgm"]
    assert clinical_ie.pending(["fed:fedavgm@0"], done, clinical_ie.variants(args_for(
        "--sweep", "--sweep-schedules", "2x20", "--server-momentum", "0.5"))) == []  # fmt: skip


def test_a_new_site_cell_trained_for_other_epochs_is_measured_again():
    done = {
        "new-site:k5:fed@0": {"k": 5, "steps": 10, "lr": 0.002},  # the fixed-step protocol
        "new-site:k5:base@0": {"k": 5, "steps": 12, "epochs": 1.0},
        "centralized@0": {},
    }
    planned = list(done)
    assert clinical_ie.pending(planned, done, {}, new_site_epochs=1.0) == ["new-site:k5:fed@0"]
    assert clinical_ie.pending(planned, done, {}, new_site_epochs=2.0) == planned[:2]
    # --new-site-epochs is checked per cell, so a resumed run may change it
    assert "new_site_epochs" in clinical_ie.SELECTION


def test_every_federated_variant_is_compared_on_every_set():
    import clinical_ie_variants as variants_table

    groups = ["d1", "d2", "d3"]
    good, worse = [[2, 0, 0], [3, 0, 1], [1, 1, 0]], [[1, 1, 1], [2, 1, 2], [0, 1, 1]]
    data = _data(
        {
            "centralized@0": good,
            "fedmedlora@0": worse,
            "fed:lr0.004@0": good,
            "single-site:bc5cdr@0": worse,
            "single-site:chia@0": [[0, 0, 3]] * 3,
            "bert-fed@0": good,  # not an LLM federated variant
            "fed:12x10@0": good,
            "centralized:360@0": worse,  # 3 sites x 12 x 10 steps
            "centralized:lr0.004@0": [[3, 0, 0]] * 3,
            "single-site:bc5cdr:120@0": [[3, 0, 0]] * 3,  # 12 x 10 steps, one site
        },
        groups,
    )
    got = variants_table.rows(data)
    assert {r["variant"] for r in got} == {"fedmedlora", "fed:lr0.004", "fed:12x10"}
    same = [r for r in got if r["against"] == "centralized, same total steps"]
    assert {r["variant"] for r in same} == {"fed:12x10"}
    assert {r["a"] for r in same} == {"centralized:360"}
    assert all(r["difference"] > 0 for r in same if r["set"] == "bc5cdr")
    same_lr = [r for r in got if r["against"] == "centralized, same learning rate"]
    assert {(r["variant"], r["a"]) for r in same_lr} == {("fed:lr0.004", "centralized:lr0.004")}
    assert all(r["difference"] < 0 for r in same_lr if r["set"] == "bc5cdr")
    assert report.counterpart("fed:12x10") == ("centralized:360", "same total steps")
    assert report.counterpart("fed:lr0.004") == ("centralized:lr0.004", "same learning rate")
    assert report.counterpart("fed:corrupt") is None and report.counterpart("fed:lrx") is None
    for name in clinical_ie.SITES:  # the report compares sweep variants on these pooled
        data["sets"][name] = data["sets"]["bc5cdr"]
        for cell in data["cells"].values():
            cell["sets"][name] = cell["sets"]["bc5cdr"]
    labels = {c["comparison"] for c in report.comparisons(data)}
    assert "fed:lr0.004 - centralized:lr0.004 (sweep, same learning rate)" in labels
    assert "fed:12x10 - best single site (sweep, same steps per site)" in labels
    long = [r for r in got if r["against"] == "best single site, same steps per site"]
    assert {(r["variant"], r["a"]) for r in long} == {("fed:12x10", "single-site:bc5cdr:120")}
    assert all(r["difference"] < 0 for r in long)
    by = {(r["variant"], r["against"]): r for r in got if r["set"] == "bc5cdr"}
    assert by["fed:lr0.004", "centralized"]["difference"] == 0.0
    assert by["fedmedlora", "centralized"]["difference"] < 0
    # the best single site on bc5cdr is chosen by its F1 there among the default-budget
    # single sites: single-site:bc5cdr (the better, longer-trained one is not a candidate)
    assert by["fedmedlora", "best single site"]["a"] == "single-site:bc5cdr"
    assert by["fedmedlora", "best single site"]["difference"] == 0.0
