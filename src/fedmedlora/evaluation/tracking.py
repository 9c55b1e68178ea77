"""Experiment tracking (MLflow, TensorBoard) of what the server already records.

Tracking is a side channel: a backend that is missing, unreachable or broken becomes a
warning and is switched off for the rest of the run; the run itself never fails because
of it. Only the server (or one site, for its own `personalize`) logs: nothing here is
sent to sites.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

Backend = Literal["mlflow", "tensorboard"]
INSTALL_HINT = "pip install 'fedmedlora[tracking]'"


class TrackingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backends: list[Backend] = Field(default_factory=list, description="empty: no tracking")
    mlflow_uri: str | None = Field(
        None,
        description="an MLflow tracking URI; default sqlite:///<folder above --out>/mlflow.db, "
        "a local file shared by every run under that folder (offline, no server)",
    )
    experiment: str | None = Field(None, description="MLflow experiment; default the run name")
    tensorboard_dir: str | None = Field(None, description="default <out>/tensorboard")


class Tracker(Protocol):
    name: str

    def start(self, params: dict[str, str]) -> None: ...
    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def finish(self, status: str, artifacts: list[Path]) -> None: ...
    def state(self) -> dict[str, Any]: ...


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """Nested settings -> {"train.learning_rate": "0.002", "data.sites.0.name": "a", ...}:
    the form trackers take parameters in (a list of plain values stays one JSON value)."""
    if isinstance(tree, list) and any(isinstance(v, dict | list) for v in tree):
        tree = dict(enumerate(tree))
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    text = json.dumps(tree) if isinstance(tree, list) else str(tree)
    return {prefix.rstrip("."): text}


class MLflowTracker:
    name = "mlflow"
    # MLflow's own limits on one log_batch request and on a parameter's value.
    MAX_PARAMS, MAX_METRICS, MAX_VALUE = 100, 1000, 6000

    def __init__(
        self, settings: TrackingSettings, out_dir: Path, run_name: str, state: dict
    ) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise RuntimeError(f"mlflow is not installed ({INSTALL_HINT})") from None
        # A tracking server that is down must cost seconds once, not minutes per round.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        for noisy in ("mlflow", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # SQLAlchemy's deprecation notices about MLflow's own queries are not the user's.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"mlflow\.")
        root = Path(out_dir).resolve().parent
        self.uri = settings.mlflow_uri or f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id: str | None = state.get("run_id")
        if self.run_id is None:  # a resumed run keeps logging to the MLflow run it began
            experiment = settings.experiment or run_name
            found = self.client.get_experiment_by_name(experiment)
            if found is not None:
                experiment_id = found.experiment_id
            else:
                # With a local store, artifacts sit beside it rather than in ./mlruns of
                # whatever folder the server happened to start in.
                local = self.uri.startswith(("sqlite:///", "file:"))
                where = (
                    (root / "mlartifacts").as_uri() if local and not settings.mlflow_uri else None
                )
                experiment_id = self.client.create_experiment(experiment, artifact_location=where)
            self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id

    def start(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], v[: self.MAX_VALUE]) for k, v in params.items()]
        for i in range(0, len(items), self.MAX_PARAMS):
            self.client.log_batch(self.run_id, params=items[i : i + self.MAX_PARAMS])

    def log(self, step: int, metrics: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in metrics.items()]
        for i in range(0, len(items), self.MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=items[i : i + self.MAX_METRICS])

    def finish(self, status: str, artifacts: list[Path]) -> None:
        for path in artifacts:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), path.name)
            elif path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, "FINISHED" if status == "completed" else "FAILED")

    def state(self) -> dict[str, Any]:
        return {"uri": self.uri, "run_id": self.run_id}


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(
        self, settings: TrackingSettings, out_dir: Path, run_name: str, state: dict
    ) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RuntimeError(f"tensorboard is not installed ({INSTALL_HINT})") from None
        self.dir = Path(settings.tensorboard_dir or Path(out_dir) / "tensorboard")
        self.writer = SummaryWriter(log_dir=str(self.dir))

    def start(self, params: dict[str, str]) -> None:
        rows = "\n".join(f"| {k} | {v} |" for k, v in params.items())
        self.writer.add_text("config", "| setting | value |\n|---|---|\n" + rows)
        self.writer.flush()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def finish(self, status: str, artifacts: list[Path]) -> None:
        # TensorBoard keeps no files; the report's text is what reads well there.
        for path in artifacts:
            if path.suffix == ".md" and path.is_file():
                self.writer.add_text(path.stem, path.read_text(encoding="utf-8"))
        self.writer.close()

    def state(self) -> dict[str, Any]:
        return {"dir": str(self.dir)}


BACKENDS: dict[str, Callable[[TrackingSettings, Path, str, dict], Tracker]] = {
    "mlflow": MLflowTracker,
    "tensorboard": TensorBoardTracker,
}


class Tracking:
    """The configured trackers behind one call each; a failing one is dropped."""

    def __init__(self) -> None:
        self.trackers: list[Tracker] = []
        self.warnings: list[str] = []
        self.logged_steps: set[int] = set()

    @classmethod
    def open(
        cls,
        settings: TrackingSettings | None,
        out_dir: Path,
        run_name: str,
        state: dict[str, Any] | None = None,
    ) -> Tracking:
        """`state`: what `state()` returned before (a resumed run continues its runs)."""
        tracking = cls()
        state = state or {}
        tracking.logged_steps = set(state.get("logged_steps", []))
        for name in dict.fromkeys(settings.backends if settings else []):
            try:
                tracker = BACKENDS[name](settings, Path(out_dir), run_name, state.get(name, {}))
            except Exception as exc:
                tracking._warn(name, "could not start", exc)
                continue
            tracking.trackers.append(tracker)
        return tracking

    def _warn(self, name: str, what: str, exc: BaseException) -> None:
        message = (
            f"tracking: {name} {what} ({type(exc).__name__}: {exc}); {name} is off for the "
            "rest of this run, and the run goes on"
        )
        log.warning(message)
        self.warnings.append(message)

    def _each(self, what: str, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:
                self.trackers.remove(tracker)
                self._warn(tracker.name, what, exc)

    def start(self, params: dict[str, str]) -> None:
        self._each("failed to log the parameters", lambda t: t.start(params))

    def log(self, step: int, metrics: dict[str, float], once: bool = False) -> None:
        """`once`: a step already logged (before a resume) is not logged again."""
        if once and step in self.logged_steps:
            return
        self._each(f"failed to log step {step}", lambda t: t.log(step, metrics))
        self.logged_steps.add(step)

    def finish(self, status: str, artifacts: Iterable[Path] = ()) -> None:
        files = list(artifacts)
        self._each("failed to store the artifacts", lambda t: t.finish(status, files))

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {t.name: t.state() for t in self.trackers}
        out["logged_steps"] = sorted(self.logged_steps)
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out
