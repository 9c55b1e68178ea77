"""The server side (Flower ServerApp): sends the global adapter, aggregates what sites
return, records metrics and traffic, and saves the final adapter in PEFT format.

`flwr run` and deployments use the module-level `app` (run config keys: `config`, the
path of a run config file, and `out`); `fedmedlora demo`/`run` call `run_federation`
through `simulation.simulate`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedmedlora.config import RunConfig
from fedmedlora.config_check import preflight
from fedmedlora.errors import FedMedLoRAError
from fedmedlora.evaluation.metrics import Scores
from fedmedlora.evaluation.report import write_report
from fedmedlora.evaluation.results import RunRecorder, round_metrics
from fedmedlora.evaluation.tracking import Tracking, flatten
from fedmedlora.federation import checkpoint
from fedmedlora.federation.aggregator import Aggregator
from fedmedlora.federation.messages import from_record, to_record
from fedmedlora.federation.replies import CountNames
from fedmedlora.federation.strategy import FedMedLoRA
from fedmedlora.model.lora import adapter_bytes
from fedmedlora.recipe.site_recipe import (
    LoadedModel,
    build_site_examples,
    initial_adapter,
    loaded_model,
    validation_loss,
)

Listener = Callable[[str, int, Any], None]


def run_federation(
    grid: Grid,
    config: RunConfig,
    out_dir: Path,
    listener: Listener | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Zero-shot evaluation, `rounds` rounds of the configured method, final adapter and
    report. A checkpoint is written after every round; `resume` continues from the last."""
    run = _Run(config, Path(out_dir), listener)
    if resume:
        run.resume()
    run.open_tracking()
    fed = config.federation
    status, error = "completed", None
    try:
        if fed.evaluate_zero_shot and not resume:
            run.zero_shot(grid)
        final_arrays = run.arrays  # a checkpoint of the last round: nothing left to run
        if run.done < fed.rounds:
            final_arrays = run.strategy.start(
                grid=grid,
                initial_arrays=run.arrays,
                num_rounds=fed.rounds - run.done,
                timeout=fed.timeout_s,
                train_config=run.round_config(
                    {"total-steps": fed.rounds * run.recipe.train.local_steps}
                ),
                evaluate_config=run.round_config({"zero-shot-prompt": False}),
            ).arrays
        if not run.strategy.train_metrics:
            raise FedMedLoRAError(
                "no round could aggregate any site's update: "
                + "; ".join(run.strategy.rejected[:5])
            )
        run.aggregator.save(run.lm.model, from_record(final_arrays), run.out)
    except BaseException as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        results = run.finish(status, error)
    return results


class _Run:
    """One federated run's server-side objects and the callbacks between them."""

    def __init__(self, config: RunConfig, out: Path, listener: Listener | None) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.config, self.out, self.listener = config, out, listener
        self.recipe = config.recipe()  # as sent to the sites
        # The recipe's thread count is for site processes sharing a machine; the server's
        # own model (aggregation, Fed-MedLoRA+ scoring, saving) must not change this one's.
        own = self.recipe.model_copy(update={"threads": None})
        self.lm = loaded_model(own)
        initial = initial_adapter(own)
        fed, sites = config.federation, config.data.site_names
        self.recorder = _recorder(config, out, self.lm, initial)
        self.aggregator = Aggregator(
            fed.aggregation,
            self.recipe.lora,
            initial,
            server_loss=_server_loss(config, own, self.lm),
            screening=fed.screening,
            privacy=fed.privacy,
            population=len(sites),
            max_site_weight=fed.max_site_weight,
        )
        sent = self.aggregator.downlink(initial)
        self.strategy = FedMedLoRA(
            {k: tuple(v.shape) for k, v in self.aggregator.uplink(sent).items()},
            aggregator=self.aggregator,
            min_sites=fed.min_sites or len(sites),
            fraction_train=fed.fraction_train,
            evaluate_every=fed.evaluate_every,
            num_rounds=fed.rounds,
            on_evaluated=self.evaluated,
            on_trained=self.trained,
            on_round_end=self.round_end,
            count_names=_count_names(self.recipe.schema_name),
            sites=sites,
            wire_dtype=fed.adapter_wire_dtype,
        )
        # Tracking may be switched on or off when resuming: not part of the run's identity.
        self.stamp = checkpoint.fingerprint(
            config.model_dump(mode="json", by_alias=True, exclude={"tracking"})
        )
        self.done = 0
        self.arrays = to_record(sent, fed.adapter_wire_dtype)

    def resume(self) -> None:
        """Continue from the last checkpoint: every object restores its own state."""
        saved = checkpoint.load(self.out, self.stamp)
        self.done = int(saved["round"])
        self.arrays = to_record(saved["arrays"], self.config.federation.adapter_wire_dtype)
        self.aggregator.load_state(saved["aggregator"])
        self.strategy.load_state(saved["strategy"], self.done)
        self.recorder.load_state(saved["recorder"])
        self._tell("resumed", self.done, None)

    def open_tracking(self) -> None:
        noted = self.recorder.state()
        self.tracking = Tracking.open(
            self.config.tracking, self.out, self.config.name, noted.get("tracking")
        )
        if "tracking" not in noted:  # a resumed run logged its parameters already
            self.tracking.start(flatten(self.config.model_dump(mode="json", by_alias=True)))

    def round_config(self, extra: dict) -> ConfigRecord:
        return ConfigRecord({"recipe": self.recipe.to_json(), **extra})

    def zero_shot(self, grid: Grid) -> None:
        self._tell("zero-shot", 0, None)
        messages = self.strategy.configure_evaluate(
            0, self.arrays, self.round_config({"zero-shot-prompt": True}), grid
        )
        replies = grid.send_and_receive(messages, timeout=self.config.federation.timeout_s)
        self.strategy.aggregate_evaluate(0, replies)
        self.tracked(0)

    def _tell(self, event: str, rnd: int, payload: Any) -> None:
        if self.listener:
            self.listener(event, rnd, payload)

    def evaluated(self, rnd: int, per_site: dict[str, Scores]) -> None:
        self.recorder.evaluated(rnd, per_site, self.strategy.eval_inference.get(rnd))
        self._tell("evaluated", rnd, per_site)

    def trained(self, rnd: int, per_site: dict[str, dict[str, float]]) -> None:
        self.recorder.trained(rnd, per_site, self.aggregator.privacy_log.get(rnd))
        self._tell("trained", rnd, per_site)

    def tracked(self, rnd: int) -> None:
        """The round's numbers, as results.json has them, to the trackers (once each)."""
        self.recorder.traffic(dict(self.strategy.traffic))
        self.recorder.rejected(self.strategy.rejected)
        if self.config.tracking.backends:
            self.tracking.log(rnd, round_metrics(self.recorder.state(), rnd), once=True)
            self.recorder.note("tracking", self.tracking.state())

    def round_end(self, rnd: int, arrays: ArrayRecord) -> None:
        self.tracked(rnd)
        checkpoint.save(
            self.out,
            {
                "fingerprint": self.stamp,
                "round": rnd,
                "arrays": from_record(arrays),
                "aggregator": self.aggregator.state(),
                "strategy": self.strategy.state(),
                "recorder": self.recorder.state(),
            },
        )

    def finish(self, status: str, error: str | None) -> dict[str, Any]:
        """results.json (and report.md, the trackers' last entries), however the run ended."""
        rounds = self.config.federation.rounds
        self.recorder.rejected(self.strategy.rejected)
        skipped = [r for r in range(1, rounds + 1) if r not in self.strategy.train_metrics]
        self.recorder.note("skipped_rounds", skipped)
        self.recorder.traffic(dict(self.strategy.traffic))
        results = self.recorder.finish(status, **({"error": error} if error else {}))
        if any("sites" in r for r in results["rounds"]):
            write_report(results, self.out)
        if self.config.tracking.backends:
            names = ["results.json", "report.md", "adapter", "shared_adapter.safetensors"]
            pngs = sorted(self.out.glob("*.png"))
            self.tracking.finish(status, [*(self.out / n for n in names), *pngs])
            self.recorder.note("tracking", self.tracking.state())
        return results


def _recorder(config: RunConfig, out: Path, lm: LoadedModel, initial: dict) -> RunRecorder:
    trainable, total = lm.model.get_nb_trainable_parameters()
    sites = config.data.site_names
    return RunRecorder(
        out,
        run={
            "name": config.name,
            "model": config.model.name,
            "rounds": config.federation.rounds,
            "sites": sites,
            "aggregation": config.federation.aggregation.method,
            "config": config.model_dump(mode="json", by_alias=True),
        },
        communication={
            "adapter_bytes": adapter_bytes(initial)  # as it travels
            // (2 if config.federation.adapter_wire_dtype == "bfloat16" else 1),
            "adapter_parameters": trainable,
            "full_model_bytes": 4 * (total - trainable),
            "model_parameters": total - trainable,
            "sites": len(sites),
        },
    )


def _count_names(schema_name: str) -> CountNames:
    """The evaluation counts a site may report: per type of the run's schema."""
    from fedmedlora.data.schema import load_schema

    schema = load_schema(schema_name)
    return CountNames.of(schema.entity_types, schema.relation_types)


def _server_loss(config: RunConfig, recipe, lm: LoadedModel):
    """A method that scores adapters on server-held data (Fed-MedLoRA+): the loss of an
    adapter on that data (all of its documents, train and test alike: the server never
    trains on them)."""
    server_data = config.federation.aggregation.server_data()
    if server_data is None:
        return None
    from fedmedlora.data.schema import load_schema
    from fedmedlora.data.sites import load_source
    from fedmedlora.model.lora import load_adapter_state

    schema = load_schema(recipe.schema_name)
    data = load_source(server_data, schema, recipe.seed)
    docs = [*data.train, *data.test]
    examples = build_site_examples(recipe, lm, docs, data.spec, schema).examples
    if not examples:
        raise FedMedLoRAError(f"server_validation {server_data.name!r}: no examples")

    def loss(state):
        load_adapter_state(lm.model, state)
        return validation_loss(recipe, examples)

    return loss


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    path = str(context.run_config.get("config", "")) or None
    out = Path(str(context.run_config.get("out", "") or "runs/flwr"))
    resume = str(context.run_config.get("resume", "false")).lower() in ("1", "true", "yes")
    # The checks of `fedmedlora check` (the sites check their own files): a config no
    # federation can run, e.g. min_sites above the sites named, fails here, not silently.
    run_federation(grid, preflight(path, site_files=False), out, resume=resume)
