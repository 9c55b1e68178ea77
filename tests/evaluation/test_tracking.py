"""Tracking: what is logged comes from results.json; a broken tracker is a warning."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import get_args

import pytest

from fedmedlora.evaluation import tracking as tracking_mod
from fedmedlora.evaluation.results import round_metrics
from fedmedlora.evaluation.tracking import Tracking, TrackingSettings, flatten

RESULTS = {
    "rounds": [
        {
            "round": 0,
            "sites": {
                "a": {
                    "entity_strict_f1": 0.1,
                    "entity_lenient_f1": 0.2,
                    "relation_strict_f1": 0.0,
                    "relation_lenient_f1": 0.0,
                }
            },
            "micro": {
                "entity_strict_f1": 0.1,
                "entity_lenient_f1": 0.2,
                "relation_strict_f1": 0.0,
                "relation_lenient_f1": 0.0,
                "entity_strict_precision": 0.5,
            },
        },
        {
            "round": 1,
            "train": {"a": {"train-loss": 2.5, "aggregation-weight": 0.75}},
            "inference": {"sites": {"a": {"eval-chunks": 4}}, "windows_per_second": 0.5},
        },
    ],
    "privacy": {"1": {"epsilon": 3.2, "delta": 1e-5}},
    "communication": {"per_round": [{"round": 1, "train_down_bytes": 10, "total_bytes": 30}]},
    "rejected_replies": [
        "round 1 train: site b (node 7): rejected reply: NaN",
        "round 1 evaluate: site b (node 7): failed",
        "round 2 train: site b (node 7): failed",
        {"round": 1, "site": "c", "reason": "num-examples is not finite"},
    ],
}


def test_round_metrics_are_the_rounds_numbers_from_results_json():
    assert round_metrics(RESULTS, 0) == {
        "a/entity_strict_f1": 0.1,
        "a/entity_lenient_f1": 0.2,
        "a/relation_strict_f1": 0.0,
        "a/relation_lenient_f1": 0.0,
        "micro/entity_strict_f1": 0.1,
        "micro/entity_lenient_f1": 0.2,
        "micro/relation_strict_f1": 0.0,
        "micro/relation_lenient_f1": 0.0,
        "rejected_replies": 0.0,
    }
    assert round_metrics(RESULTS, 1) == {
        "train/a/train-loss": 2.5,
        "train/a/aggregation-weight": 0.75,
        "inference/a/eval-chunks": 4.0,
        "inference/windows_per_second": 0.5,
        "privacy/epsilon": 3.2,
        "privacy/delta": 1e-5,
        "traffic/train_down_bytes": 10.0,
        "traffic/total_bytes": 30.0,
        "rejected_replies": 3.0,
    }


def test_flatten_gives_dotted_string_parameters():
    tree = {"train": {"lr": 0.1}, "types": ["a", "b"], "sites": [{"name": "n", "k": None}]}
    assert flatten(tree) == {
        "train.lr": "0.1",
        "types": '["a", "b"]',
        "sites.0.name": "n",
        "sites.0.k": "None",
    }


class Flaky:
    """A tracker that fails at one call."""

    name = "flaky"

    def __init__(self, fail_at: str):
        self.fail_at, self.calls = fail_at, []

    def _call(self, what, *args):
        self.calls.append(what)
        if what == self.fail_at:
            raise ConnectionError("server went away")

    def start(self, params):
        self._call("start", params)

    def log(self, step, metrics):
        self._call("log", step)

    def finish(self, status, artifacts):
        self._call("finish")

    def state(self):
        return {}


def test_a_failing_tracker_becomes_one_warning_and_is_dropped(caplog):
    tracking = Tracking()
    flaky, good = Flaky("log"), Flaky("never")
    tracking.trackers = [flaky, good]
    tracking.start({"a": "1"})
    tracking.log(1, {"m": 1.0})
    tracking.log(2, {"m": 2.0})
    tracking.finish("completed")
    assert flaky.calls == ["start", "log"]  # never called again after its failure
    assert good.calls == ["start", "log", "log", "finish"]
    assert len(tracking.warnings) == 1
    assert "flaky failed to log step 1 (ConnectionError: server went away)" in tracking.warnings[0]
    assert tracking.warnings[0] in caplog.text
    assert tracking.state() == {"flaky": {}, "logged_steps": [1, 2], "warnings": tracking.warnings}


def test_a_resumed_run_logs_each_round_once(tmp_path):
    tracking = Tracking.open(None, tmp_path, "r", {"logged_steps": [0, 1]})
    tracker = Flaky("never")
    tracking.trackers = [tracker]
    tracking.log(1, {"m": 1.0}, once=True)
    tracking.log(2, {"m": 1.0}, once=True)
    assert tracker.calls == ["log"] and tracking.state()["logged_steps"] == [0, 1, 2]


def test_a_missing_package_is_a_warning_with_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)  # as if not installed
    tracking = Tracking.open(TrackingSettings(backends=["mlflow"]), tmp_path / "out", "r")
    assert tracking.trackers == []
    assert "mlflow is not installed (pip install 'fedmedlora[tracking]')" in tracking.warnings[0]


def test_mlflow_run_is_continued_after_a_resume(tmp_path):
    pytest.importorskip("mlflow")
    settings = TrackingSettings(backends=["mlflow"])
    first = Tracking.open(settings, tmp_path / "out", "study")
    first.start({"seed": "0"})
    first.log(1, {"micro/entity_strict_f1": 0.25})
    state = first.state()
    again = Tracking.open(settings, tmp_path / "out", "study", state)
    again.log(1, {"micro/entity_strict_f1": 0.99}, once=True)  # logged before the crash
    again.log(2, {"micro/entity_strict_f1": 0.5}, once=True)
    again.finish("completed", [Path(tmp_path / "missing.md")])
    assert not first.warnings and not again.warnings
    from mlflow.tracking import MlflowClient

    client = MlflowClient(state["mlflow"]["uri"])
    history = client.get_metric_history(state["mlflow"]["run_id"], "micro/entity_strict_f1")
    assert [(m.step, m.value) for m in history] == [(1, 0.25), (2, 0.5)]
    run = client.get_run(state["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and run.data.params == {"seed": "0"}
    assert (tmp_path / "mlflow.db").is_file()  # beside the run folder, shared by runs


def test_every_configurable_backend_is_registered():
    assert set(tracking_mod.BACKENDS) == set(get_args(tracking_mod.Backend))
