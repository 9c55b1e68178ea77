"""The site side (Flower ClientApp). A node holds only its own documents: in simulation
the node's partition id picks one configured site; in deployment the node is started
with `--node-config "site-config='/path/site.yaml'"` pointing at its own data.

Replies carry the trained adapter, counts and timings: checked by `privacy.check_reply`
before they leave.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedmedlora.data.site_check import check_site_config
from fedmedlora.errors import ConfigError, FedMedLoRAError
from fedmedlora.federation.messages import (
    ARRAYS,
    CONFIG,
    METRICS,
    SITE,
    from_record,
    to_record,
    wire_dtype,
)
from fedmedlora.federation.methods.base import DEFAULT_METHOD, method
from fedmedlora.federation.methods.hetero_rank import fit_rank
from fedmedlora.federation.privacy import check_reply
from fedmedlora.model.lora import offset_base_weights, save_adapter
from fedmedlora.recipe.settings import Recipe
from fedmedlora.recipe.site_recipe import SiteRecipe
from fedmedlora.recipe.site_setup import site_recipe

app = ClientApp()
# Node-state records of what never leaves the site (a method's `kept_local` tensors, e.g.
# FedSA's B) and how often it trained.
PERSONAL, PERSONAL_ROUNDS = "fedsa-personal", "fedsa-personal-rounds"


def check_own_site(context: Context) -> Iterator[None]:
    """A SuperNode's own site config is checked (files, format, mapping; the schema's
    types once the recipe names it) before any message is handled, and every problem is
    printed at the node, one `file:line: reason` line each, instead of a traceback
    after the model has loaded."""
    site_config = str(context.node_config.get("site-config", ""))
    if site_config:
        try:
            check_site_config(site_config, schema_name=None)
        except FedMedLoRAError as exc:
            print(f"[fedmedlora] this node's site config cannot be used:\n{exc}", file=sys.stderr)
            raise
    yield


app.lifespan()(check_own_site)


@cache
def _site_recipe(recipe_json: str, site_name: str, site_config: str) -> SiteRecipe:
    return site_recipe(Recipe.model_validate_json(recipe_json), site_name, site_config)


def site_for(context: Context, recipe_json: str) -> SiteRecipe:
    node = context.node_config
    site_config = str(node.get("site-config", ""))
    if site_config:
        return _site_recipe(recipe_json, "", site_config)
    names = Recipe.model_validate_json(recipe_json).data.site_names
    pid = int(node.get("partition-id", -1))
    if not 0 <= pid < len(names):
        raise ConfigError(f"partition-id {pid} has no site; configured sites: {names}")
    return _site_recipe(recipe_json, names[pid], "")


def complete(site: SiteRecipe, received: dict, context: Context) -> dict:
    """The full adapter from what the server sent, in this site's shapes.

    An adapter tensor the server did not send is the site's own: one it kept local (in
    its node state, e.g. FedSA's B) or its initialisation (e.g. FFA-LoRA's frozen A, the
    seeded init every site builds alike). A tensor the server sent that is no adapter
    tensor offsets the frozen base weight it names (FedEx-LoRA's residual). A site of its
    own, lower rank gets the global adapter truncated to that rank.
    """
    initial = site.lm.initial
    base = {k: v for k, v in received.items() if k not in initial}
    if base:
        offset_base_weights(site.lm.model, base)
    if set(initial) <= set(received):
        state = {k: v for k, v in received.items() if k in initial}
    else:
        own = {**initial, **(_personal(context) or {})}
        state = {k: received[k] if k in received else own[k] for k in initial}
    return fit_rank(site, state)


def _personal(context: Context) -> dict | None:
    """This site's own lora_B factors (FedSA), kept across rounds in its node state."""
    record = context.state.array_records.get(PERSONAL)
    return from_record(record) if record is not None else None


def _reply(msg: Message, content: RecordDict, adapter_shapes=None) -> Message:
    check_reply(content, adapter_shapes)  # nothing but adapter tensors and numbers leaves
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = msg.content[CONFIG]
    site = site_for(context, str(config["recipe"]))
    server_round = int(config["server-round"])
    hooks = method(str(config.get("aggregation", DEFAULT_METHOD)))  # its site hooks
    received = from_record(msg.content[ARRAYS])
    state, stats = site.train(
        complete(site, received, context),
        server_round,
        int(config["total-steps"]),
        freeze=hooks.site_freeze,
    )
    extra = {}
    if hooks.kept_local is not None:  # for the next round and for evaluation
        context.state[PERSONAL] = to_record({k: v for k, v in state.items() if hooks.kept_local(k)})
        rounds = context.state.metric_records.get(PERSONAL_ROUNDS)
        extra["personal-rounds"] = int(rounds["rounds"]) + 1 if rounds else 1
        context.state[PERSONAL_ROUNDS] = MetricRecord({"rounds": extra["personal-rounds"]})
    # Send back the adapter tensors that came (FFA: B only, FedSA: A only).
    state = {k: state[k] for k in received if k in site.lm.initial}
    name = site.site.spec.name
    if site.validation.examples:
        extra["val-loss"] = site.validation_loss()
    print(
        f"[{name}] round {server_round}: {stats.steps} steps, loss {stats.mean_loss:.3f}"
        + (f", validation loss {extra['val-loss']:.3f}" if "val-loss" in extra else "")
        + f", {stats.seconds:.0f}s",
        flush=True,
    )
    metrics = MetricRecord(
        {
            "num-examples": len(site.examples.examples),
            "train-loss": stats.mean_loss,
            "train-seconds": stats.seconds,
            "train-steps": stats.steps,
            "train-tokens": stats.tokens,
            **extra,
        }
    )
    content = RecordDict(
        {
            ARRAYS: to_record(state, wire_dtype(msg.content[ARRAYS])),  # as the server sent
            METRICS: metrics,
            SITE: ConfigRecord({SITE: name}),
        }
    )
    return _reply(msg, content, {k: tuple(site.lm.initial[k].shape) for k in state})


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    config = msg.content[CONFIG]
    site = site_for(context, str(config["recipe"]))
    began = time.perf_counter()
    state = complete(site, from_record(msg.content[ARRAYS]), context)
    scores, stats = site.evaluate(
        state, zero_shot_prompt=bool(config.get("zero-shot-prompt", False))
    )
    if site.keep_dir and _personal(context) is not None:
        # The personalized adapter (global A + this site's B) stays at the site.
        save_adapter(site.lm.model, state, Path(site.keep_dir) / "personal_adapter")
    name = site.site.spec.name
    summary = scores.summary()
    print(
        f"[{name}] eval round {config['server-round']}: entity strict F1 "
        f"{summary['entity_strict_f1']:.3f}, lenient {summary['entity_lenient_f1']:.3f} "
        f"({stats.chunks} chunks, {time.perf_counter() - began:.0f}s)",
        flush=True,
    )
    metrics = MetricRecord(
        {
            **scores.to_counts(),
            "num-examples": len(site.site.test),
            **stats.metrics(),  # inference.INFERENCE_METRICS
            **{f"parse/{k}": v for k, v in stats.issues.items()},
        }
    )
    return _reply(msg, RecordDict({METRICS: metrics, SITE: ConfigRecord({SITE: name})}))
