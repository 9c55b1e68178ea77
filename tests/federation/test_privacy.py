import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedmedlora.federation.privacy import EgressViolation, check_reply

SHAPES = {"a.lora_A.weight": (2, 4), "a.lora_B.weight": (4, 2)}


def _arrays(**over):
    arrays = {k: np.zeros(s, dtype=np.float32) for k, s in SHAPES.items()}
    arrays.update(over)
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def test_adapter_and_numbers_pass():
    check_reply(
        RecordDict(
            {
                "arrays": _arrays(),
                "metrics": MetricRecord({"num-examples": 3, "train-loss": 0.5}),
                "site": ConfigRecord({"site": "hospital-a"}),
            }
        ),
        SHAPES,
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            RecordDict({"site": ConfigRecord({"site": "a", "note": "Pt c/o chest pain"})}),
            "'note' is not allowed",
        ),
        (
            RecordDict({"site": ConfigRecord({"site": "chest pain since yesterday"})}),
            "'site' is not allowed",
        ),
        (
            RecordDict({"arrays": _arrays(**{"a.lora_A.weight": np.arange(8).reshape(2, 4)})}),
            "not float32",
        ),
        (
            RecordDict({"arrays": _arrays(**{"a.lora_A.weight": np.zeros((2, 4), np.float64)})}),
            "not float32",
        ),
        (
            RecordDict({"arrays": _arrays(**{"input_ids": np.zeros((1, 5), np.float32)})}),
            "unexpected \\['input_ids'\\]",
        ),
        (
            RecordDict({"arrays": _arrays(**{"a.lora_B.weight": np.zeros((4, 3), np.float32)})}),
            "shape",
        ),
        (RecordDict({"metrics": MetricRecord({"ids": list(range(2000))})}), "long list"),
    ],
)
def test_anything_else_is_refused(content, message):
    with pytest.raises(EgressViolation, match=message):
        check_reply(content, SHAPES)


def test_arrays_are_refused_where_none_are_expected():
    with pytest.raises(EgressViolation, match="only sent after training"):
        check_reply(RecordDict({"arrays": _arrays()}), None)


def test_lower_rank_factors_pass_only_where_sites_may_train_their_own_rank():
    lower = {
        "a.lora_A.weight": np.zeros((1, 4), np.float32),
        "a.lora_B.weight": np.zeros((4, 1), np.float32),
    }
    check_reply(RecordDict({"arrays": _arrays(**lower)}), SHAPES, lower_rank=True)
    with pytest.raises(EgressViolation, match="shape"):
        check_reply(RecordDict({"arrays": _arrays(**lower)}), SHAPES)
    for bad in (
        {"a.lora_A.weight": np.zeros((3, 4), np.float32)},  # above the global rank
        {"a.lora_A.weight": np.zeros((1, 5), np.float32)},  # other input size
        {"a.lora_B.weight": np.zeros((3, 1), np.float32)},  # other output size
    ):
        with pytest.raises(EgressViolation, match="shape"):
            check_reply(RecordDict({"arrays": _arrays(**bad)}), SHAPES, lower_rank=True)


def test_bf16_adapters_pass_and_round_trip_at_half_the_bytes():
    import torch

    from fedmedlora.federation.messages import from_record, to_record, wire_dtype

    state = {k: torch.randn(s) for k, s in SHAPES.items()}
    half, full = to_record(state, "bfloat16"), to_record(state)
    check_reply(RecordDict({"arrays": half}), SHAPES)
    assert wire_dtype(half) == "bfloat16" and wire_dtype(full) == "float32"
    assert sum(len(a.data) for a in half.values()) == 2 * sum(s[0] * s[1] for s in SHAPES.values())
    back = from_record(half)
    for k, v in state.items():
        assert back[k].dtype == torch.float32
        assert torch.equal(back[k], v.to(torch.bfloat16).float())  # exactly bf16's rounding
    assert all(torch.equal(from_record(full)[k], v) for k, v in state.items())


def test_a_bf16_array_whose_bytes_do_not_fit_its_shape_is_refused():
    from fedmedlora.federation.messages import BF16_STYPE

    bad = Array(dtype="bfloat16", shape=(2, 4), stype=BF16_STYPE, data=b"\x00" * 6)
    arrays = _arrays()
    arrays["a.lora_A.weight"] = bad
    with pytest.raises(EgressViolation, match="malformed bfloat16"):
        check_reply(RecordDict({"arrays": arrays}), SHAPES)
    odd = Array(dtype="bfloat17", shape=(2, 4), stype="numpy.ndarray", data=b"\x00" * 16)
    arrays["a.lora_A.weight"] = odd
    with pytest.raises(EgressViolation, match="dtype bfloat17 is not float32"):
        check_reply(RecordDict({"arrays": arrays}), SHAPES)
