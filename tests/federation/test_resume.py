"""A run killed after a round's checkpoint resumes to the same final adapter as an
uninterrupted run with the same seed (server optimizer state included)."""

from __future__ import annotations

import json

import pytest
import torch

from fedmedlora.apps.simulation import simulate
from fedmedlora.config import load_config
from fedmedlora.data.formats.jsonl import write_jsonl
from fedmedlora.errors import ConfigError
from fedmedlora.recipe.protocols import load_peft_adapter
from tests.fixtures import notes

pytestmark = pytest.mark.slow  # three Flower simulations


class Killed(RuntimeError):
    pass


def _config(root, rounds=3):
    write_jsonl(notes(10, "north"), root / "north.jsonl")
    write_jsonl(notes(12, "south", offset=20), root / "south.jsonl")
    (root / "run.yaml").write_text(
        "name: resume\nmodel: {name: tiny-random}\n"
        "train: {local_steps: 2, batch_size: 4, learning_rate: 0.01}\n"
        "generation: {batch_size: 8, max_new_tokens: 16}\n"
        "data:\n  sites:\n    - {name: north, train: north.jsonl, test_fraction: 0.3}\n"
        "    - {name: south, train: south.jsonl, test_fraction: 0.3}\n"
        f"federation: {{rounds: {rounds}, evaluate_every: 0, evaluate_zero_shot: false,"
        " aggregation: {method: fedadam, server_lr: 0.05}}\n"
    )
    return load_config(root / "run.yaml")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One uninterrupted 3-round run (both tests need one): its config and folder."""
    root = tmp_path_factory.mktemp("resume")
    config = _config(root)
    simulate(config, root / "full")
    return config, root


def test_resumed_run_reaches_the_uninterrupted_final_adapter(tmp_path, uninterrupted):
    config, root = uninterrupted
    full = load_peft_adapter(root / "full" / "adapter")

    def kill_in_round_3(event, rnd, payload):
        if event == "trained" and rnd == 3:
            raise Killed("server killed in round 3")

    with pytest.raises(Killed):
        simulate(config, tmp_path / "cut", listener=kill_in_round_3)
    cut = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert cut["run"]["status"] == "failed" and not (tmp_path / "cut" / "adapter").exists()

    events = []
    results = simulate(
        config, tmp_path / "cut", listener=lambda e, r, p: events.append((e, r)), resume=True
    )
    assert ("resumed", 2) in events and ("trained", 1) not in events  # only round 3 ran
    assert results["run"]["status"] == "completed"
    assert [r["round"] for r in results["rounds"] if r.get("train")] == [1, 2, 3]
    resumed = load_peft_adapter(tmp_path / "cut" / "adapter")
    assert resumed.keys() == full.keys()
    for key in full:
        assert torch.allclose(resumed[key], full[key], atol=1e-6), key


def test_resume_refuses_a_missing_or_foreign_checkpoint(tmp_path, uninterrupted):
    config, root = uninterrupted
    with pytest.raises(ConfigError, match="no checkpoint to resume from"):
        simulate(config, tmp_path / "none", resume=True)
    before = (root / "full" / "results.json").read_bytes()
    other = config.model_copy(update={"seed": 7})
    with pytest.raises(ConfigError, match="different run config"):
        simulate(other, root / "full", resume=True)
    assert (root / "full" / "results.json").read_bytes() == before  # nothing lost
