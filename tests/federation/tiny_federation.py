"""A tiny federation on Flower's Simulation Engine with every message recorded: the
tiny model, two hand-made sites of different size and label sets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from fedmedlora.apps.client_app import app as client_app
from fedmedlora.apps.server_app import run_federation
from fedmedlora.apps.simulation import backend_config
from fedmedlora.config import load_config
from fedmedlora.data.formats.jsonl import write_jsonl
from fedmedlora.data.schema import load_schema
from fedmedlora.data.site import SiteSpec
from fedmedlora.model.lora import load_adapter_state
from fedmedlora.recipe.site_recipe import build_site_examples, loaded_model, validation_loss
from tests.fixtures import notes


class RecordingGrid:
    """Delegates to Flower's grid and keeps every message sent and received."""

    def __init__(self, grid: Grid):
        self._grid = grid
        self.sent: list = []
        self.received: list = []

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *args, **kwargs):
        messages = list(messages)
        self.sent += messages
        replies = list(self._grid.send_and_receive(messages, *args, **kwargs))
        self.received += replies
        return replies

    def train_replies(self) -> list:
        return [m for m in self.received if m.has_content() and m.content.array_records]

    def train_messages(self) -> list:
        return [m for m in self.sent if m.metadata.message_type == "train"]


@dataclass
class TinyRun:
    grid: RecordingGrid
    results: dict[str, Any]
    out: Path
    docs: dict[str, list]
    config: Any


def run_tiny(
    root: Path,
    federation: str = "{rounds: 2}",
    extra: str = "",
    north: str = "",
    client: ClientApp = client_app,
) -> TinyRun:
    """`federation`: the YAML of the federation block; `extra`: more top-level YAML;
    `north`: more keys for the north site (e.g. ", lora_rank: 4")."""
    docs = {"north": notes(10, "north"), "south": notes(14, "south", offset=20)}
    sites = (
        f"    - {{name: north, train: north.jsonl, test_fraction: 0.3{north}}}\n"
        "    - {name: south, train: south.jsonl, test_fraction: 0.3,"
        " entity_types: [problem, drug, dosage], relation_types: [modifies]}\n"
    )
    return _simulate(root, docs, sites, federation, extra, client)


def run_equal_sites(root: Path, n: int, federation: str, client: ClientApp = client_app) -> TinyRun:
    """`n` sites of 8 notes each with the same labels (robust aggregation needs several)."""
    docs = {f"site{i}": notes(8, f"site{i}", offset=10 * i) for i in range(n)}
    sites = "".join(
        f"    - {{name: {name}, train: {name}.jsonl, test_fraction: 0.25}}\n" for name in docs
    )
    return _simulate(root, docs, sites, federation, "", client)


def _simulate(
    root: Path,
    docs: dict[str, list],
    sites: str,
    federation: str,
    extra: str,
    client: ClientApp,
) -> TinyRun:
    for site, site_docs in docs.items():
        write_jsonl(site_docs, root / f"{site}.jsonl")
    (root / "run.yaml").write_text(
        "name: tiny\nmodel: {name: tiny-random}\n"
        "train: {local_steps: 3, batch_size: 4, learning_rate: 0.01}\n"
        "generation: {batch_size: 8, max_new_tokens: 24}\n"
        f"data:\n  sites:\n{sites}"
        f"federation: {federation}\n{extra}"
    )
    config = load_config(root / "run.yaml")
    out = root / "out"
    holder: dict[str, Any] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        holder["grid"] = RecordingGrid(grid)
        holder["results"] = run_federation(holder["grid"], config, out)

    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=len(docs),
        backend_config=backend_config(config),
    )
    assert "results" in holder, "server app did not finish"
    return TinyRun(holder["grid"], holder["results"], out, docs, config)


def heldout_loss(run: TinyRun, state: dict[str, torch.Tensor]) -> float:
    """Loss of an adapter on notes no site has: the tiny model's F1 stays 0 in a few
    steps, but its loss moves, so this is how tests compare runs' quality."""
    recipe = run.config.recipe()
    lm = loaded_model(recipe)
    schema = load_schema(recipe.schema_name)
    spec = SiteSpec.full("heldout", schema)
    examples = build_site_examples(recipe, lm, notes(12, "heldout", offset=500), spec, schema)
    load_adapter_state(lm.model, state)
    return validation_loss(recipe, examples.examples)
