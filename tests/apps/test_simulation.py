"""A tiny federation end to end on Flower's Simulation Engine: 2 sites x 2 rounds with the
tiny model, every message recorded and audited, tracked to MLflow and TensorBoard."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.common.serde import message_to_proto

from fedmedlora.federation.aggregation import weighted_average
from tests.federation.tiny_federation import run_tiny


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    run = run_tiny(
        tmp_path_factory.mktemp("fed"), extra="tracking: {backends: [mlflow, tensorboard]}\n"
    )
    return run.grid, run.results, run.out, run.docs


def test_results_have_per_round_per_site_metrics_and_communication(federation):
    _, results, out, _ = federation
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["run"]["status"] == "completed"
    assert [r["round"] for r in on_disk["rounds"]] == [0, 1, 2]
    for r in on_disk["rounds"]:
        assert set(r["sites"]) == {"north", "south"}
        assert 0.0 <= r["sites"]["north"]["entity_strict_f1"] <= 1.0
        speed = r["inference"]  # evaluation speed (inference.INFERENCE_METRICS)
        assert set(speed["sites"]) == {"north", "south"}
        assert speed["windows_per_second"] > 0 and speed["forward_passes_per_token"] > 0
    assert set(on_disk["rounds"][1]["train"]) == {"north", "south"}
    final = on_disk["final"]["sites"]["south"]
    assert set(final) == {
        "entity_strict_f1",
        "entity_lenient_f1",
        "relation_strict_f1",
        "relation_lenient_f1",
    }
    comm = on_disk["communication"]
    assert comm["adapter_bytes_per_round"] > 2 * 2 * comm["adapter_bytes"] * 0.99
    assert comm["full_model_bytes"] > comm["adapter_bytes"]
    # south annotates only three types, so nothing else is scored there
    south = on_disk["rounds"][2]["sites"]["south"]["detail"]["entity"]["strict"]["per_type"]
    assert set(south) <= {"problem", "drug", "dosage"}
    assert (out / "report.md").is_file() and (out / "f1_per_round.png").is_file()


def test_sites_send_only_adapter_tensors_and_counts(federation):
    grid, _, _, docs = federation
    assert len(grid.received) == 2 * 3 + 2 * 2  # evaluate rounds 0-2, train rounds 1-2
    secrets = {d.text for ds in docs.values() for d in ds}
    secrets |= {e.text for ds in docs.values() for d in ds for e in d.entities if len(e.text) > 3}
    for msg in grid.sent + grid.received:
        assert not msg.has_error(), msg.error.reason if msg.has_error() else ""
        wire = message_to_proto(msg).SerializeToString()
        leaked = [s for s in secrets if s.encode() in wire]
        assert not leaked, f"note text on the wire: {leaked[:3]}"
    for reply in grid.received:
        content = reply.content
        assert set(content.config_records) <= {"site"}
        for record in content.array_records.values():
            for key in record:
                arr = record[key].numpy()
                assert ".lora_A." in key or ".lora_B." in key
                assert np.issubdtype(arr.dtype, np.floating)
        for record in content.metric_records.values():
            assert all(isinstance(v, int | float) for v in record.values())


def test_global_adapter_is_the_example_weighted_average_of_the_last_round(federation):
    grid, _, out, _ = federation
    from safetensors.torch import load_file

    last_train = [m for m in grid.received if m.content.array_records][-2:]
    states = [dict(m.content["arrays"].to_torch_state_dict()) for m in last_train]
    weights = [m.content["metrics"]["num-examples"] for m in last_train]
    assert weights[0] != weights[1]  # different site sizes, so the weighting matters
    expected = weighted_average(states, weights)
    saved = load_file(out / "adapter" / "adapter_model.safetensors")
    assert set(saved) == {k.replace(".default", "") for k in expected} or set(saved) == set(
        expected
    )
    for key, value in expected.items():
        assert torch.allclose(saved[key], value, atol=1e-6)


def expected_from_results(results: dict) -> dict[tuple[str, int], float]:
    """(metric, round) -> value, read straight off results.json's layout."""
    out: dict[tuple[str, int], float] = {}
    for entry in results["rounds"]:
        rnd = entry["round"]
        for site, block in entry["sites"].items():
            for key in ("entity_strict_f1", "entity_lenient_f1", "relation_strict_f1"):
                out[f"{site}/{key}", rnd] = block[key]
        out["micro/entity_lenient_f1", rnd] = entry["micro"]["entity_lenient_f1"]
        for site, metrics in entry.get("train", {}).items():
            out[f"train/{site}/train-loss", rnd] = metrics["train-loss"]
            out[f"train/{site}/aggregation-weight", rnd] = metrics["aggregation-weight"]
    for row in results["communication"]["per_round"]:
        out["traffic/train_up_bytes", row["round"]] = row["train_up_bytes"]
        out["traffic/total_bytes", row["round"]] = row["total_bytes"]
    return out


def test_mlflow_holds_what_results_json_says(federation):
    from mlflow.tracking import MlflowClient

    _, results, out, _ = federation
    expected = expected_from_results(json.loads((out / "results.json").read_text()))
    assert any(v > 0 for (k, _), v in expected.items() if k.startswith("train/"))
    state = results["tracking"]["mlflow"]
    assert state["uri"] == f"sqlite:///{out.parent / 'mlflow.db'}"
    client = MlflowClient(state["uri"])
    run = client.get_run(state["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert run.data.params["train.local_steps"] == "3"
    assert run.data.params["model.name"] == "tiny-random"
    for (key, rnd), value in expected.items():
        history = {m.step: m.value for m in client.get_metric_history(state["run_id"], key)}
        assert history.get(rnd) == pytest.approx(value), (key, rnd)
    stored = {a.path for a in client.list_artifacts(state["run_id"])}
    assert {"results.json", "report.md", "f1_per_round.png", "adapter"} <= stored


def test_tensorboard_holds_what_results_json_says(federation):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, results, out, _ = federation
    expected = expected_from_results(json.loads((out / "results.json").read_text()))
    events = EventAccumulator(results["tracking"]["tensorboard"]["dir"])
    events.Reload()
    for (key, rnd), value in expected.items():
        scalars = {e.step: e.value for e in events.Scalars(key)}
        assert scalars.get(rnd) == pytest.approx(value, rel=1e-6), (key, rnd)  # float32
    assert {"config/text_summary", "report/text_summary"} <= set(events.Tags()["tensors"])
