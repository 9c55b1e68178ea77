"""One of three sites sends a malformed reply, through the strategy itself (Flower
messages in, aggregate out; no simulation): for every kind of reply the run goes on, the
global adapter stays finite and within what the honest sites produce, and the reply is
named as rejected, with its round, its site and the reason."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)

from fedmedlora.config import ScreeningSettings, aggregation_settings
from fedmedlora.federation.aggregator import Aggregator
from fedmedlora.federation.messages import to_record
from fedmedlora.federation.replies import CountNames
from fedmedlora.federation.strategy import FedMedLoRA
from fedmedlora.model.lora import LoraSettings

SHAPES = {"m.lora_A.weight": (2, 6), "m.lora_B.weight": (5, 2)}
HONEST = {1: "riverside", 2: "northgate"}  # node -> site
HOSTILE_NODE, HOSTILE = 3, "lakeside"
NAMES = CountNames.of(["drug", "problem"], ["modifies"])


def _state(seed: int, offset: float = 0.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.1 + offset for k, s in SHAPES.items()}


INITIAL = _state(0)
# The hostile site's own adapter lies far outside the honest ones, so that any weight it
# got would show in the aggregate.
FAR = _state(99, offset=5.0)


def _strategy(method: str = "fedmedlora") -> FedMedLoRA:
    aggregator = Aggregator(
        aggregation_settings(method=method),
        LoraSettings(rank=2, alpha=4),
        INITIAL,
        screening=ScreeningSettings(min_updates=1),
    )
    return FedMedLoRA(
        dict(SHAPES),
        aggregator=aggregator,
        min_sites=3,
        num_rounds=3,
        count_names=NAMES,
        sites=[*HONEST.values(), HOSTILE, "eastwood"],
    )


def _reply(node: int, content: RecordDict, kind: str = "train") -> Message:
    """A reply as the server receives it from `node` (its metadata set by the SuperLink)."""
    meta = Metadata(
        run_id=1,
        message_id=f"{kind}-{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id="",
        group_id="",
        created_at=0.0,
        ttl=3600.0,
        message_type=kind,
    )
    return Message(content=content, metadata=meta)


def _train_content(
    state: dict[str, torch.Tensor], site: str, **metrics
) -> dict[str, ArrayRecord | MetricRecord | ConfigRecord]:
    base = {"num-examples": 10, "train-loss": 0.5, "val-loss": 1.0}
    return {
        "arrays": to_record(state),
        "metrics": MetricRecord({**base, **metrics}),
        "site": ConfigRecord({"site": site}),
    }


def _eval_content(site: str, **metrics) -> dict:
    counts = {"entity/strict/drug/tp": 3, "entity/strict/drug/fp": 1, "num-examples": 4}
    return {"metrics": MetricRecord({**counts, **metrics}), "site": ConfigRecord({"site": site})}


def _with_array(key: str, value: np.ndarray) -> ArrayRecord:
    arrays = {k: Array(v.numpy()) for k, v in FAR.items()}
    arrays[key] = Array(value)
    return ArrayRecord(arrays)


def _drop(content: dict, *keys: str) -> dict:
    return {k: v for k, v in content.items() if k not in keys}


A, B = "m.lora_A.weight", "m.lora_B.weight"
FAR_A = FAR[A].numpy()
Edit = Callable[[dict], dict]


def _metrics(**changes) -> Edit:
    def edit(content: dict) -> dict:
        metrics = dict(content["metrics"])
        for key, value in changes.items():
            key = key.replace("_", "-")
            if value is DROP:
                metrics.pop(key)
            else:
                metrics[key] = value
        return {**content, "metrics": MetricRecord(metrics)}

    return edit


DROP = object()


def _arrays(record: ArrayRecord) -> Edit:
    return lambda content: {**content, "arrays": record}


def _raw_array(key: str, declared: str, data: np.ndarray) -> ArrayRecord:
    """A record that declares `declared` and the adapter's shape for `key`, while its .npy
    payload is `data`, of another dtype or shape."""
    arrays = {k: Array(v.numpy()) for k, v in FAR.items()}
    real = Array(data)
    arrays[key] = Array(dtype=declared, shape=SHAPES[key], stype=real.stype, data=real.data)
    return ArrayRecord(arrays)


# (case id, edit of the hostile train reply, a fragment of the reason logged)
TRAIN_CASES: list[tuple[str, Edit, str]] = [
    ("count-missing", _metrics(num_examples=DROP), "num-examples is missing"),
    ("count-nan", _metrics(num_examples=float("nan")), "not finite"),
    ("count-inf", _metrics(num_examples=float("inf")), "not finite"),
    ("count-negative", _metrics(num_examples=-5), "outside [1,"),
    ("count-zero", _metrics(num_examples=0), "outside [1,"),
    ("count-fraction", _metrics(num_examples=2.5), "not a whole number"),
    ("count-list", _metrics(num_examples=[10, 20]), "not a number"),
    ("count-1e9", _metrics(num_examples=10**9), "outside [1,"),
    ("train-loss-nan", _metrics(train_loss=float("nan")), "not finite"),
    ("train-loss-negative", _metrics(train_loss=-1.0), "below 0"),
    ("free-text-metric", _metrics(**{"Pt c/o chest pain since Monday": 1.0}), "not one a site"),
    ("float16", _arrays(_with_array(A, FAR_A.astype(np.float16))), "not float32"),
    ("float64", _arrays(_with_array(A, FAR_A.astype(np.float64))), "not float32"),
    ("int", _arrays(_with_array(A, FAR_A.astype(np.int32))), "not float32"),
    (
        "float64-declared-float32",
        _arrays(_raw_array(A, "float32", FAR_A.astype(np.float64))),
        "holds float64",
    ),
    ("missing-key", _arrays(ArrayRecord({A: Array(FAR_A)})), "missing ['m.lora_B.weight']"),
    (
        "extra-key",
        _arrays(_with_array("input_ids", np.zeros((1, 4), np.float32))),
        "unexpected ['input_ids']",
    ),
    ("misshapen", _arrays(_with_array(A, np.zeros((3, 6), np.float32))), "shape"),
    (
        "misshapen-payload",
        _arrays(_raw_array(A, "float32", np.zeros((3, 6), np.float32))),
        "holds shape",
    ),
    ("nan-array", _arrays(_with_array(A, np.full((2, 6), np.nan, np.float32))), "NaN or Inf"),
    ("inf-array", _arrays(_with_array(B, np.full((5, 2), -np.inf, np.float32))), "NaN or Inf"),
    (
        "garbage-payload",
        _arrays(
            ArrayRecord(
                {
                    A: Array(
                        dtype="float32", shape=(2, 6), stype="numpy.ndarray", data=b"\x93NUMPY junk"
                    ),
                    B: Array(FAR[B].numpy()),
                }
            )
        ),
        "not a readable array",
    ),
    ("no-arrays", lambda c: _drop(c, "arrays"), "exactly one array record"),
    ("no-metrics", lambda c: _drop(c, "metrics"), "exactly one metric record"),
    ("no-site-name", lambda c: _drop(c, "site"), "no site name"),
    (
        "note-as-site-name",
        lambda c: {**c, "site": ConfigRecord({"site": "chest pain, 3 days"})},
        "'site' is not allowed",
    ),
    (
        "spoofed-site",
        lambda c: {**c, "site": ConfigRecord({"site": "riverside"})},
        "(site lakeside) claims to be site 'riverside'",
    ),
    (
        "unknown-site",
        lambda c: {**c, "site": ConfigRecord({"site": "intruder"})},
        "site 'intruder' is not one the run config names",
    ),
    ("empty", lambda c: {}, "exactly one metric record"),
]


def _bind_names(strategy: FedMedLoRA) -> None:
    """Round 0 (zero-shot evaluation) as the server app runs it: every site answers once,
    which binds its name to its node."""
    replies = [_reply(n, RecordDict(_eval_content(s)), "evaluate") for n, s in HONEST.items()]
    replies.append(_reply(HOSTILE_NODE, RecordDict(_eval_content(HOSTILE)), "evaluate"))
    assert strategy.aggregate_evaluate(0, replies) is not None
    assert strategy.rejected == []


def _train_round(strategy: FedMedLoRA, hostile: dict, rnd: int = 1):
    honest = {n: _state(n) for n in HONEST}
    strategy.current = dict(INITIAL)
    replies = [_reply(n, RecordDict(_train_content(honest[n], s))) for n, s in HONEST.items()]
    replies.append(_reply(HOSTILE_NODE, RecordDict(hostile)))
    arrays, metrics = strategy.aggregate_train(rnd, replies)
    return honest, arrays, metrics


def _assert_within_honest(arrays: ArrayRecord, honest: dict) -> None:
    result = dict(arrays.to_torch_state_dict())
    for key in SHAPES:
        stacked = torch.stack([s[key] for s in honest.values()])
        assert bool(torch.isfinite(result[key]).all())
        assert bool((result[key] >= stacked.min(0).values - 1e-6).all())
        assert bool((result[key] <= stacked.max(0).values + 1e-6).all())


@pytest.mark.parametrize(
    ("edit", "reason"), [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES]
)
def test_a_malformed_train_reply_is_rejected_and_the_round_goes_on(edit, reason):
    strategy = _strategy()
    _bind_names(strategy)
    honest, arrays, metrics = _train_round(strategy, edit(_train_content(FAR, HOSTILE)))
    assert arrays is not None and metrics["sites"] == 2  # the honest sites, aggregated
    _assert_within_honest(arrays, honest)
    named = [r for r in strategy.rejected if r.startswith("round 1 train: ")]
    assert any(reason in r for r in named), strategy.rejected
    assert all(f"node {HOSTILE_NODE}" in r for r in named), strategy.rejected
    assert set(strategy.train_metrics[1]) == set(HONEST.values())


@pytest.mark.parametrize(
    ("val_loss", "reason"),
    [
        (float("nan"), "not finite"),
        (-1e6, "below 0"),
        (float("-inf"), "not finite"),
        (DROP, "val-loss is missing"),
    ],
    ids=["nan", "minus-1e6", "minus-inf", "missing"],
)
def test_a_malformed_validation_loss_is_rejected_under_fedmedlora_plus(val_loss, reason):
    strategy = _strategy("fedmedlora+")
    _bind_names(strategy)
    hostile = _metrics(val_loss=val_loss)(_train_content(FAR, HOSTILE))
    honest, arrays, _ = _train_round(strategy, hostile)
    _assert_within_honest(arrays, honest)
    assert any(reason in r and f"node {HOSTILE_NODE}" in r for r in strategy.rejected)


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({"entity/strict/drug/tp": float("nan")}, "not finite"),
        ({"entity/strict/drug/fp": float("inf")}, "not finite"),
        ({"entity/strict/drug/tp": -4}, "outside [0,"),
        ({"entity/strict/drug/fn": 1.5}, "not a whole number"),
        ({"num-examples": float("nan")}, "not finite"),
        ({"eval-seconds": -1.0}, "below 0"),
        ({"entity/strict/Pt c/o chest pain/tp": 1}, "not one a site"),
        ({"entity/strict/fracture/tp": 1}, "not one a site"),  # not a schema type
        ({"relation/strict/modifies:drug->x y/tp": 1}, "not one a site"),
        ({"parse/whatever the note said": 1}, "not one a site"),
        ({"entity/strict/drug/tp": [1, 2]}, "not a number"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
def test_a_malformed_evaluation_reply_is_rejected_and_scores_stay_sane(metrics, reason):
    strategy = _strategy()
    _bind_names(strategy)
    replies = [_reply(n, RecordDict(_eval_content(s)), "evaluate") for n, s in HONEST.items()]
    replies.append(_reply(HOSTILE_NODE, RecordDict(_eval_content(HOSTILE, **metrics)), "evaluate"))
    seen = {}
    strategy.on_evaluated = lambda rnd, per_site: seen.update(per_site)
    summary = strategy.aggregate_evaluate(1, replies)
    assert set(seen) == set(HONEST.values())
    assert summary["entity_strict_precision"] == pytest.approx(0.75)  # 6 tp, 2 fp
    assert all(0 <= v <= 1 and math.isfinite(v) for v in summary.values())
    assert any(reason in r and f"node {HOSTILE_NODE}" in r for r in strategy.rejected)


def test_a_site_claiming_huge_data_gets_no_more_than_the_cap():
    """10^8 examples passes the count check (it is the cap), but the weight cap keeps the
    site to half the aggregate: the result stays nearer the honest sites than to it."""
    strategy = _strategy()
    _bind_names(strategy)
    hostile = _train_content(_state(3), HOSTILE, **{"num-examples": 10**8})
    _train_round(strategy, hostile)
    weights = strategy.aggregator.weights_log[1]
    assert weights[HOSTILE] == pytest.approx(0.5)
    assert weights["riverside"] == pytest.approx(0.25)


def test_a_node_answers_for_one_site_only_and_contested_names_bind_to_none():
    strategy = _strategy()
    # Round 0: nodes 3 and 4 both claim northgate first: neither gets it.
    strategy.sites = None  # any name (as without a run config naming the sites)
    replies = [
        _reply(1, RecordDict(_eval_content("riverside")), "evaluate"),
        _reply(3, RecordDict(_eval_content("northgate")), "evaluate"),
        _reply(4, RecordDict(_eval_content("northgate")), "evaluate"),
    ]
    strategy.aggregate_evaluate(0, replies)
    assert "northgate" not in strategy.site_nodes
    assert any("claimed by nodes 3, 4 at once" in r for r in strategy.rejected)
    # Round 1: node 3 alone claims it and gets it; node 1 may not switch names, and a
    # new node 5 may not take riverside.
    strategy.rejected.clear()
    strategy.current = dict(INITIAL)
    _, metrics = strategy.aggregate_train(
        1,
        [
            _reply(1, RecordDict(_train_content(_state(1), "northgate"))),
            _reply(3, RecordDict(_train_content(_state(3), "northgate"))),
            _reply(5, RecordDict(_train_content(_state(5), "riverside"))),
        ],
    )
    assert strategy.site_nodes == {"riverside": 1, "northgate": 3}
    assert metrics["sites"] == 1
    assert set(strategy.train_metrics[1]) == {"northgate"}
    rejected = " | ".join(strategy.rejected)
    assert "node 1 (site riverside) claims to be site 'northgate'" in rejected
    assert "node 5 claims site 'riverside', which node 1 holds for this run" in rejected


def test_an_exception_inside_aggregation_skips_the_round_and_keeps_the_adapter(monkeypatch):
    strategy = _strategy()
    _bind_names(strategy)

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in some method")

    monkeypatch.setattr(strategy.aggregator, "aggregate", broken)
    _, arrays, metrics = _train_round(strategy, _train_content(_state(3), HOSTILE))
    assert arrays is None and metrics is None  # Flower keeps the previous global adapter
    assert any(
        "round 1 skipped, the global adapter kept: aggregation failed: ZeroDivisionError" in r
        for r in strategy.rejected
    )
    assert 1 not in strategy.train_metrics  # results.json lists it under skipped_rounds


def test_a_first_reply_that_fails_names_the_site_it_claims():
    strategy = _strategy()
    reply = _reply(
        7, RecordDict(_eval_content(HOSTILE, **{"entity/strict/drug/tp": -1})), "evaluate"
    )
    strategy.aggregate_evaluate(0, [reply])
    assert strategy.rejected[0].startswith("round 0 evaluate: node 7 (claims site lakeside): ")
    assert "lakeside" not in strategy.site_nodes  # a refused reply binds nothing


def test_a_round_with_no_usable_reply_is_skipped_and_says_so():
    strategy = _strategy()
    strategy.current = dict(INITIAL)
    bad = _train_content(FAR, HOSTILE, **{"num-examples": -1})
    assert strategy.aggregate_train(1, [_reply(HOSTILE_NODE, RecordDict(bad))]) == (None, None)
    assert (
        strategy.rejected[-1] == "round 1 skipped, the global adapter kept: no reply could be used"
    )
