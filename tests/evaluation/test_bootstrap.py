"""Bootstrap intervals over documents (evaluation/bootstrap.py)."""

from __future__ import annotations

import pytest

from fedmedlora.data.document import Document, Entity
from fedmedlora.evaluation.bootstrap import (
    bootstrap_f1,
    key_slice,
    micro_counts,
    paired_bootstrap,
)
from fedmedlora.evaluation.metrics import score_document


def test_point_estimate_is_the_micro_f1_of_all_documents():
    items = [[3, 1, 0], [0, 0, 2], [1, 1, 1]]  # tp 4, fp 2, fn 3
    out = bootstrap_f1([items], ["a", "b", "c"], n=200)
    assert out["f1"] == pytest.approx(round(8 / 13, 4))
    low, high = out["ci95"]
    assert low <= out["f1"] <= high


def test_windows_of_one_document_are_resampled_together():
    # Two documents: one perfect (its windows split 3 + 3 tp), one all wrong. Resampled as
    # documents the F1 takes only 3 values; resampled as 4 windows it would take more.
    items = [[3, 0, 0], [3, 0, 0], [0, 3, 3], [0, 3, 3]]
    grouped = bootstrap_f1([items], ["d1", "d1", "d2", "d2"], n=500)
    assert grouped["ci95"] == [0.0, 1.0]  # both-bad and both-good resamples occur
    assert grouped["f1"] == 0.5


def test_paired_difference_of_a_model_with_itself_is_exactly_zero():
    items = [[2, 1, 0], [0, 1, 1], [4, 0, 2], [1, 2, 0]]
    out = paired_bootstrap([items], [items], list("abcd"), n=300)
    assert out["difference"] == 0 and out["ci95"] == [0.0, 0.0]


def test_pairing_narrows_the_interval_of_a_uniform_gain():
    # b finds one more entity than a in every document: documents differ a lot in
    # difficulty, yet the paired interval excludes 0.
    a = [[k, 4, 4] for k in range(0, 20, 2)]
    b = [[k + 1, 4, 3] for k in range(0, 20, 2)]
    groups = [f"d{i}" for i in range(10)]
    out = paired_bootstrap([a], [b], groups, n=1000)
    assert out["difference"] > 0
    assert out["ci95"][0] > 0
    assert out["share_b_better"] == 1.0
    ia, ib = bootstrap_f1([a], groups)["ci95"], bootstrap_f1([b], groups)["ci95"]
    assert ib[0] < ia[1]  # the separate intervals overlap


def test_several_runs_are_averaged():
    run1 = [[1, 0, 0], [1, 0, 0]]  # F1 1.0
    run2 = [[0, 1, 1], [0, 1, 1]]  # F1 0.0
    out = bootstrap_f1([run1, run2], ["a", "b"])
    assert out["f1"] == 0.5 and out["runs"] == 2


def test_counts_must_match_the_groups():
    with pytest.raises(ValueError, match="group labels"):
        bootstrap_f1([[[1, 0, 0]]], ["a", "b"])


def test_micro_counts_of_a_scored_document():
    gold = Document(
        id="d",
        text="aspirin for pain",
        entities=[
            Entity(id="T1", type="drug", start=0, end=7, text="aspirin"),
            Entity(id="T2", type="problem", start=12, end=16, text="pain"),
        ],
    )
    pred = gold.model_copy(
        update={"entities": [Entity(id="T1", type="drug", start=0, end=4, text="aspi")]}
    )
    flat = micro_counts(score_document(gold, pred))
    assert flat[key_slice("entity", "strict")] == [0, 1, 2]
    assert flat[key_slice("entity", "lenient")] == [1, 0, 1]
