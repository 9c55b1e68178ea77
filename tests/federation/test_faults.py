"""A site that dies mid-round or sends garbage through the real Flower path: it is left
out with a reason, a round with too few good updates is skipped with the global adapter
kept, and the run completes."""

from __future__ import annotations

import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from fedmedlora.evaluation.protocols import load_peft_adapter
from fedmedlora.federation import client_app as real
from fedmedlora.federation.aggregation import weighted_average
from tests.federation.tiny_federation import run_tiny

pytestmark = pytest.mark.slow  # a Flower simulation (Ray, several processes)

faulty = ClientApp()


@faulty.train()
def train(msg: Message, context: Context) -> Message:
    """South crashes in round 1 and sends NaN in round 2; north is fine."""
    server_round = int(msg.content["config"]["server-round"])
    south = int(context.node_config["partition-id"]) == 1
    if south and server_round == 1:
        raise RuntimeError("site south: out of memory (simulated)")
    reply = real.train(msg, context)
    if south and server_round == 2:
        arrays = reply.content["arrays"]
        poisoned = {}
        for key in arrays:
            value = arrays[key].numpy().copy()
            value.flat[0] = float("nan")
            poisoned[key] = Array(value)
        reply.content["arrays"] = ArrayRecord(poisoned)
    return reply


@faulty.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return real.evaluate(msg, context)


def test_faulty_site_is_left_out_and_short_rounds_are_skipped(tmp_path):
    run = run_tiny(
        tmp_path,
        "{rounds: 3, evaluate_every: 0, evaluate_zero_shot: false}",
        client=faulty,
    )
    assert run.config.federation.screening.min_updates == 1  # one good update will do
    results = run.results
    assert results["run"]["status"] == "completed"
    rejected = " | ".join(results["rejected_replies"])
    assert "out of memory" in rejected  # the crash, as Flower reports it
    assert "south: " in rejected and "NaN" in rejected  # the garbage, from screening
    # with one good update left, rounds 1 and 2 aggregate north alone
    assert results["skipped_rounds"] == []
    for rnd in (1, 2):
        entry = next(r for r in results["rounds"] if r["round"] == rnd)
        weights = {s: m["aggregation-weight"] for s, m in entry["train"].items()}
        assert weights.get("north") == pytest.approx(1.0) and weights.get("south", 0.0) == 0.0
    last = run.grid.train_replies()[-2:]
    states = [dict(m.content["arrays"].to_torch_state_dict()) for m in last]
    assert all(torch.isfinite(v).all() for s in states for v in s.values())  # round 3 clean
    counts = [float(m.content["metrics"]["num-examples"]) for m in last]
    saved = load_peft_adapter(run.out / "adapter")
    expected = weighted_average(states, counts)
    assert all(torch.allclose(saved[k], expected[k], atol=1e-6) for k in expected)


def test_a_round_without_enough_good_updates_keeps_the_global_adapter(tmp_path):
    run = run_tiny(
        tmp_path,
        "{rounds: 3, evaluate_every: 0, evaluate_zero_shot: false, screening: {min_updates: 2}}",
        client=faulty,
    )
    results = run.results
    assert results["run"]["status"] == "completed"
    assert results["skipped_rounds"] == [1, 2]
    assert any("round 2 skipped" in r and "NaN" in r for r in results["rejected_replies"])
    sent = [dict(m.content["arrays"].to_torch_state_dict()) for m in run.grid.train_messages()]
    assert len(sent) == 6
    for later in sent[2:]:  # rounds 2 and 3 start from the untouched initial adapter
        assert all(torch.equal(later[k], sent[0][k]) for k in sent[0])
