"""The server's field checks of a reply (federation/replies.py), one rule at a time; the
hostile-reply table (test_hostile_replies.py) drives them through the strategy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import fedmedlora.task.markup as markup
from fedmedlora.data.schema import load_schema
from fedmedlora.evaluation.metrics import Counts, Scores
from fedmedlora.federation.replies import (
    MAX_EXAMPLES,
    PARSE_ISSUES,
    CountNames,
    InvalidReply,
    check_eval_metrics,
    check_train_metrics,
)


def test_the_parse_repairs_allowed_are_the_ones_markup_counts():
    counted = set(re.findall(r'issues\["(\w+)"\]', Path(markup.__file__).read_text("utf-8")))
    assert counted and counted == PARSE_ISSUES


def test_what_an_honest_site_sends_passes():
    train = {"num-examples": 40, "train-loss": 1.2, "train-seconds": 3.5, "train-steps": 8,
             "train-tokens": 4096, "val-loss": 0.9, "personal-rounds": 2}  # fmt: skip
    assert check_train_metrics(train, needs_val_loss=True) == {
        k: float(v) for k, v in train.items()
    }
    assert check_train_metrics({"num-examples": 12.0})["num-examples"] == 12.0  # whole float
    schema = load_schema("clinical")
    scores = Scores()
    scores.entity["strict"]["drug"] += Counts(3, 1, 2)
    scores.relation["lenient"]["modifies:dosage->drug"] += Counts(1, 0, 0)
    evaluation = {**scores.to_counts(), "num-examples": 0, "eval-seconds": 2.5,
                  "eval-chunks": 7, "parse/unclosed_tag": 1}  # fmt: skip
    names = CountNames.of(schema.entity_types, schema.relation_types)
    assert check_eval_metrics(evaluation, names)["entity/strict/drug/tp"] == 3


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({"num-examples": True}, "bool, not a number"),
        ({"num-examples": MAX_EXAMPLES + 1}, "outside"),
        ({"num-examples": 3, "train-steps": 1.5}, "not a whole number"),
        ({"num-examples": 3, "x" * 500: 1}, "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...'"),
    ],
)
def test_train_metrics_that_make_no_sense_are_refused(metrics, reason):
    with pytest.raises(InvalidReply, match=re.escape(reason)):
        check_train_metrics(metrics)


def test_count_names_follow_the_schema_or_else_stay_short_identifiers():
    schema = CountNames.of(["drug", "dosage"], ["modifies"])
    assert schema.allows("entity/lenient/drug/fn")
    assert schema.allows("relation/strict/modifies:dosage->drug/tp")
    assert not schema.allows("entity/strict/problem/tp")  # not in this schema
    assert not schema.allows("relation/strict/treats:dosage->drug/tp")
    assert not schema.allows("entity/strict/drug/precision")
    assert not schema.allows("entity/fuzzy/drug/tp")
    assert not schema.allows("entity/strict/drug/tp/extra")
    free = CountNames()
    assert free.allows("entity/strict/any_type.1/tp")
    assert not free.allows("entity/strict/chest pain since Monday/tp")
    assert not free.allows("entity/strict/" + "a" * 65 + "/tp")


def test_arrays_decode_only_in_the_wire_dtype_the_server_sent():
    import torch

    from fedmedlora.federation.messages import to_record
    from fedmedlora.federation.replies import decode_arrays

    state = {"m.lora_A.weight": torch.tensor([[1.0, -2.5], [0.125, 3.0]])}
    shapes = {"m.lora_A.weight": (2, 2)}
    half = to_record(state, "bfloat16")
    decoded = decode_arrays(half, shapes, wire_dtype="bfloat16")
    assert decoded["m.lora_A.weight"].dtype == torch.float32
    assert torch.equal(decoded["m.lora_A.weight"], state["m.lora_A.weight"])  # exact in bf16
    with pytest.raises(InvalidReply, match="not in the float32 the server sent"):
        decode_arrays(half, shapes)
    with pytest.raises(InvalidReply, match="not in the bfloat16 the server sent"):
        decode_arrays(to_record(state), shapes, wire_dtype="bfloat16")
    nan = to_record(
        {"m.lora_A.weight": torch.tensor([[float("nan"), 0.0], [0.0, 0.0]])}, "bfloat16"
    )
    with pytest.raises(InvalidReply, match="NaN or Inf"):
        decode_arrays(nan, shapes, wire_dtype="bfloat16")
