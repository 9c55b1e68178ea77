"""The deployment ServerApp runs the pre-flight check before it waits for any SuperNode."""

from __future__ import annotations

import pytest
from flwr.app import Context, RecordDict

from fedmedlora.apps import server_app
from fedmedlora.errors import ConfigProblems


def test_a_config_no_federation_can_run_fails_before_waiting_for_sites(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(
        "model: {name: tiny-random}\n"
        "data:\n  sites:\n    - {name: a, train: at-the-site.jsonl}\n"
        "federation: {min_sites: 2}\n"
    )
    context = Context(
        run_id=1,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config={"config": str(config), "out": str(tmp_path / "out")},
    )
    with pytest.raises(ConfigProblems) as caught:
        server_app.main(None, context)  # no grid needed: nothing gets that far
    # the sites' own files are theirs to check (each SuperNode has its site config)
    (problem,) = caught.value.problems
    assert problem.line == 5 and "min_sites: 2 sites required but only 1" in problem.reason
    assert not (tmp_path / "out").exists()
