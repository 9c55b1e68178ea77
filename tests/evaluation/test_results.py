import json

from fedmedlora.evaluation.inference import INFERENCE_METRICS, ExtractionStats
from fedmedlora.evaluation.metrics import Scores
from fedmedlora.evaluation.results import RunRecorder


def test_inference_speed_of_each_site_reaches_results_json(tmp_path):
    stats = {
        "a": ExtractionStats(chunks=10, generated_tokens=400, seconds=5.0, forward_passes=100),
        "b": ExtractionStats(chunks=30, generated_tokens=600, seconds=15.0, forward_passes=300),
    }
    metrics = {site: s.metrics() for site, s in stats.items()}
    assert set(metrics["a"]) == set(INFERENCE_METRICS)
    assert metrics["a"]["eval-windows-per-second"] == 2.0
    assert metrics["a"]["eval-forward-passes-per-token"] == 0.25
    recorder = RunRecorder(tmp_path, {"name": "t"}, {"full_model_bytes": 1})
    recorder.evaluated(1, {"a": Scores(), "b": Scores()}, metrics)
    saved = json.loads((tmp_path / "results.json").read_text())["rounds"][0]["inference"]
    assert saved["sites"]["b"]["eval-chunks"] == 30
    assert saved["windows_per_second"] == 40 / 20
    assert saved["forward_passes_per_token"] == 400 / 1000
