"""One machine, many virtual sites: the same ServerApp and ClientApp on Flower's
Simulation Engine (Ray), each site's ClientApp in its own actor process."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedmedlora.apps.client_app import app as client_app
from fedmedlora.apps.server_app import Listener, run_federation
from fedmedlora.config import RunConfig


def backend_config(config: RunConfig) -> dict[str, Any]:
    import torch

    n_sites = len(config.data.site_names)
    gpus = config.simulation.client_gpus
    if gpus is None:
        gpus = 1.0 / n_sites if torch.cuda.is_available() else 0.0
    return {
        "client_resources": {"num_cpus": config.simulation.client_cpus, "num_gpus": gpus},
        "init_args": {
            "num_cpus": os.cpu_count() or 1,
            "logging_level": logging.ERROR,
            "log_to_driver": True,
        },
    }


class _HideRunSimulationDeprecation(logging.Filter):
    """Drops Flower's "DEPRECATED FEATURE: run_simulation" banner, which users of
    `fedmedlora run/demo` cannot act on (see `simulate`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not (text.startswith("DEPRECATED FEATURE") and "run_simulation" in str(record.args))


_HIDE_BANNER = _HideRunSimulationDeprecation()


def simulate(
    config: RunConfig,
    out_dir: Path,
    listener: Listener | None = None,
    quiet: bool = True,
    resume: bool = False,
) -> dict[str, Any]:
    """Run the federation in simulation; returns results.json's content. `resume`
    continues from the checkpoint in `out_dir`.

    Flower 1.42 marks `run_simulation` deprecated in favour of `flwr run`, which starts a
    SuperLink and runs the apps as a packaged Flower App in other processes, configured
    only by flat key/value run-config. This run needs the validated RunConfig, the output
    folder and the live progress listener in the server app, and returns results in
    process (tests and `fedmedlora run/demo` rely on that); `run_simulation` is still the
    installed Flower's in-process Simulation Engine entry point, so it stays, and its
    deprecation banner is filtered from the user's terminal.
    """
    from flwr.simulation import run_simulation

    outcome: dict[str, Any] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            outcome["results"] = run_federation(grid, config, out_dir, listener, resume)
        except BaseException as exc:  # re-raised in the caller's thread below
            outcome["error"] = exc

    flwr_logger = logging.getLogger("flwr")
    flwr_logger.addFilter(_HIDE_BANNER)  # idempotent: the same filter object
    previous = flwr_logger.level
    if quiet:
        flwr_logger.setLevel(logging.WARNING)
    try:
        run_simulation(
            server_app=server,
            client_app=client_app,
            num_supernodes=len(config.data.site_names),
            backend_config=backend_config(config),
        )
    finally:
        flwr_logger.setLevel(previous)
    if "error" in outcome:
        raise outcome["error"]
    if "results" not in outcome:
        raise RuntimeError("the simulation ended without running the server app")
    return outcome["results"]
