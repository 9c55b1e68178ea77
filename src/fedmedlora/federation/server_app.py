"""The server side (Flower ServerApp): sends the global adapter, aggregates what sites
return, records metrics and traffic, and saves the final adapter in PEFT format.

`flwr run` and deployments use the module-level `app` (run config keys: `config`, the
path of a run config file, and `out`); `fedmedlora demo`/`train` call `run_federation`
through `simulation.simulate`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context
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
from fedmedlora.model.lora import adapter_bytes, save_adapter
from fedmedlora.training.recipe import (
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
    """Zero-shot evaluation, `rounds` rounds of Fed-MedLoRA, final adapter and report.
    A checkpoint is written after every round; `resume` continues from the last one."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe = config.recipe()  # as sent to the sites
    # The recipe's thread count is for site processes sharing a machine; the server's own
    # model (aggregation, Fed-MedLoRA+ scoring, saving) must not change this process's.
    own = recipe.model_copy(update={"threads": None})
    lm = loaded_model(own)
    initial = initial_adapter(own)
    trainable, total = lm.model.get_nb_trainable_parameters()
    sites = config.data.site_names
    recorder = RunRecorder(
        out_dir,
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

    def evaluated(rnd: int, per_site: dict[str, Scores]) -> None:
        recorder.evaluated(rnd, per_site, strategy.eval_inference.get(rnd))
        if listener:
            listener("evaluated", rnd, per_site)

    def trained(rnd: int, per_site: dict[str, dict[str, float]]) -> None:
        recorder.trained(rnd, per_site, aggregator.privacy_log.get(rnd))
        if listener:
            listener("trained", rnd, per_site)

    fed = config.federation
    aggregator = Aggregator(
        fed.aggregation,
        recipe.lora,
        initial,
        server_loss=_server_loss(config, own, lm),
        screening=fed.screening,
        privacy=fed.privacy,
        population=len(sites),
        max_site_weight=fed.max_site_weight,
    )
    sent = aggregator.downlink(initial)
    strategy = FedMedLoRA(
        {k: tuple(v.shape) for k, v in sent.items()},
        aggregator=aggregator,
        min_sites=fed.min_sites or len(sites),
        fraction_train=fed.fraction_train,
        evaluate_every=fed.evaluate_every,
        num_rounds=fed.rounds,
        on_evaluated=evaluated,
        on_trained=trained,
        count_names=_count_names(recipe.schema_name),
        sites=sites,
        wire_dtype=fed.adapter_wire_dtype,
    )
    recipe_json = recipe.to_json()
    # Tracking may be switched on or off when resuming: it is not part of the run's identity.
    stamp = checkpoint.fingerprint(
        config.model_dump(mode="json", by_alias=True, exclude={"tracking"})
    )
    done = 0
    if resume:
        saved = checkpoint.load(out_dir, stamp)
        done, sent = int(saved["round"]), saved["arrays"]
        aggregator.load_state_dict(saved["aggregator"])
        strategy.traffic.update(saved["strategy"].pop("traffic"))
        for name, value in saved["strategy"].items():
            setattr(strategy, name, value)
        recorder.data = saved["recorder"]
        strategy.round_offset = done
        if listener:
            listener("resumed", done, None)
    tracking = Tracking.open(config.tracking, out_dir, config.name, recorder.data.get("tracking"))
    if "tracking" not in recorder.data:  # a resumed run logged its parameters already
        tracking.start(flatten(config.model_dump(mode="json", by_alias=True)))

    def tracked(rnd: int) -> None:
        """The round's numbers, as results.json has them, to the trackers (once each)."""
        recorder.traffic(dict(strategy.traffic))
        recorder.rejected(strategy.rejected)
        if config.tracking.backends:
            tracking.log(rnd, round_metrics(recorder.data, rnd), once=True)
            recorder.note("tracking", tracking.state())

    def round_end(rnd: int, arrays) -> None:
        tracked(rnd)
        checkpoint.save(
            out_dir,
            {
                "fingerprint": stamp,
                "round": rnd,
                "arrays": from_record(arrays),
                "aggregator": aggregator.state_dict(),
                "strategy": {
                    "traffic": dict(strategy.traffic),
                    "rejected": strategy.rejected,
                    "train_metrics": strategy.train_metrics,
                },
                "recorder": recorder.data,
            },
        )

    strategy.on_round_end = round_end
    arrays = to_record(sent, fed.adapter_wire_dtype)
    status, error = "completed", None
    try:
        if fed.evaluate_zero_shot and not resume:
            if listener:
                listener("zero-shot", 0, None)
            zero_cfg = ConfigRecord({"recipe": recipe_json, "zero-shot-prompt": True})
            replies = grid.send_and_receive(
                strategy.configure_evaluate(0, arrays, zero_cfg, grid), timeout=fed.timeout_s
            )
            strategy.aggregate_evaluate(0, replies)
            tracked(0)
        final_arrays = arrays  # a checkpoint of the last round: nothing left to run
        if done < fed.rounds:
            final_arrays = strategy.start(
                grid=grid,
                initial_arrays=arrays,
                num_rounds=fed.rounds - done,
                timeout=fed.timeout_s,
                train_config=ConfigRecord(
                    {"recipe": recipe_json, "total-steps": fed.rounds * recipe.train.local_steps}
                ),
                evaluate_config=ConfigRecord({"recipe": recipe_json, "zero-shot-prompt": False}),
            ).arrays
        if not strategy.train_metrics:
            raise FedMedLoRAError(
                "no round could aggregate any site's update: " + "; ".join(strategy.rejected[:5])
            )
        final = from_record(final_arrays)
        if aggregator.method == "fedsa":
            # Each site's B never left it: there is no global adapter, only the shared
            # part (the sites keep their personalized adapters, see SiteSource.keep_dir).
            from safetensors.torch import save_file

            save_file(final, str(out_dir / "shared_adapter.safetensors"))
        else:
            save_adapter(lm.model, aggregator.full(final), out_dir / "adapter")
    except BaseException as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        recorder.rejected(strategy.rejected)
        recorder.note(
            "skipped_rounds",
            [r for r in range(1, fed.rounds + 1) if r not in strategy.train_metrics],
        )
        recorder.traffic(dict(strategy.traffic))
        results = recorder.finish(status, **({"error": error} if error else {}))
        if any("sites" in r for r in results["rounds"]):
            write_report(results, out_dir)
        if config.tracking.backends:
            names = ["results.json", "report.md", "adapter", "shared_adapter.safetensors"]
            pngs = sorted(out_dir.glob("*.png"))
            tracking.finish(status, [*(out_dir / n for n in names), *pngs])
            recorder.note("tracking", tracking.state())
    return results


def _count_names(schema_name: str) -> CountNames:
    """The evaluation counts a site may report: per type of the run's schema."""
    from fedmedlora.data.schema import load_schema

    schema = load_schema(schema_name)
    return CountNames.of(schema.entity_types, schema.relation_types)


def _server_loss(config: RunConfig, recipe, lm: LoadedModel):
    """Fed-MedLoRA+ with server-held data: the loss of an adapter on that data (all of
    its documents, train and test alike: the server never trains on them)."""
    agg = config.federation.aggregation
    if agg.method != "fedmedlora+" or agg.validation != "server":
        return None
    from fedmedlora.data.schema import load_schema
    from fedmedlora.data.sites import load_source
    from fedmedlora.model.lora import load_adapter_state

    assert agg.server_validation is not None  # the config's validator demands it
    schema = load_schema(recipe.schema_name)
    data = load_source(agg.server_validation, schema, recipe.seed)
    docs = [*data.train, *data.test]
    examples = build_site_examples(recipe, lm, docs, data.spec, schema).examples
    if not examples:
        raise FedMedLoRAError(f"server_validation {agg.server_validation.name!r}: no examples")

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
