"""A SuperNode's ClientApp checks its own site config before it handles any message."""

from __future__ import annotations

import pytest
from flwr.app import Context, RecordDict

from fedmedlora.apps import client_app
from fedmedlora.errors import ConfigProblems
from fedmedlora.recipe.settings import Recipe


def _context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})


def test_a_bad_site_config_is_reported_at_start_with_every_line(tmp_path, capsys):
    site = tmp_path / "site.yaml"
    site.write_text("name: north\ntrain: nowhere/\nformat: bratt\nentity_types: [symptom]\n")
    context = _context({"site-config": str(site)})
    with pytest.raises(ConfigProblems) as caught, client_app.app._lifespan(context):
        pass  # the registered lifespan runs before every message
    # paths and format at start; the types once the recipe names the schema
    assert [p.line for p in caught.value.problems] == [2, 3]
    err = capsys.readouterr().err
    assert "this node's site config cannot be used" in err and f"{site}:2: train: " in err
    with pytest.raises(ConfigProblems) as caught:
        client_app.site_for(context, Recipe().to_json())
    assert [p.line for p in caught.value.problems] == [2, 3, 4]


def test_simulated_nodes_have_no_site_config_to_check():
    with client_app.app._lifespan(_context({"partition-id": 0})):
        pass
