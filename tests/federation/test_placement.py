"""Where simulated sites run (Ray resources) and what users see of Flower's logging;
no simulation is started here."""

from __future__ import annotations

import logging

import pytest

from fedmedlora.apps.simulation import _HIDE_BANNER, backend_config
from fedmedlora.config import load_config


def test_sites_get_the_configured_gpu_fraction_and_share_a_gpu_by_default(monkeypatch):
    import torch

    config = load_config(None, {"simulation.client_gpus": 0.5, "simulation.client_cpus": 2})
    resources = backend_config(config)["client_resources"]
    assert resources == {"num_cpus": 2, "num_gpus": 0.5}  # two sites per GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    shared = backend_config(load_config(None))["client_resources"]
    assert shared["num_gpus"] == pytest.approx(1 / 3)  # three demo sites on one GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert backend_config(load_config(None))["client_resources"]["num_gpus"] == 0.0


def test_the_run_simulation_deprecation_banner_is_filtered_and_nothing_else():
    from flwr.supercore.logger import warn_deprecated_feature

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    flwr_logger = logging.getLogger("flwr")
    handler = Keep()
    flwr_logger.addHandler(handler)
    flwr_logger.addFilter(_HIDE_BANNER)
    try:
        warn_deprecated_feature("The `run_simulation` function is deprecated ...")
        warn_deprecated_feature("something else")
    finally:
        flwr_logger.removeHandler(handler)
        flwr_logger.removeFilter(_HIDE_BANNER)
    assert len(seen) == 1 and "something else" in seen[0]
