"""The pre-flight check as a library: what `run`, `demo` and a SuperNode call first."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmedlora.config_check import check_run, preflight
from fedmedlora.errors import ConfigProblems

BAD = Path(__file__).parent / "cli" / "bad_configs"


def test_preflight_returns_the_config_with_paths_resolved():
    config = preflight(BAD / "good.yaml")
    assert config.data.sites[0].train == [str(BAD / "data" / "north.jsonl")]
    assert preflight(None, {"federation.rounds": 1}).federation.rounds == 1  # the demo


def test_preflight_raises_every_problem_with_its_line():
    with pytest.raises(ConfigProblems) as caught:
        preflight(BAD / "many_problems.yaml")
    assert [p.line for p in caught.value.problems] == [5, 6, 10, 11, 14, 16, 17]
    assert str(caught.value).startswith(f"{BAD / 'many_problems.yaml'}: invalid run config, 7")


def test_a_faulty_section_does_not_hide_the_rest(tmp_path):
    # rounds: 0 makes the federation section invalid; min_sites is still checked.
    config = tmp_path / "run.yaml"
    config.write_text(
        "data: {synthetic: {sites: [riverside]}}\nfederation:\n  rounds: 0\n  min_sites: 2\n"
    )
    reasons = [p.reason for p in check_run(config).problems]
    assert len(reasons) == 2 and reasons[0].startswith("federation.rounds:")
    assert "federation.min_sites: 2 sites required but only 1" in reasons[1]


def test_reading_the_data_counts_documents_and_reports_broken_files(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"schema_version": 1, "id": "x", "text": "a"}\n{oops\n')
    config = tmp_path / "run.yaml"
    config.write_text("data:\n  sites:\n    - {name: a, train: bad.jsonl}\n")
    assert not check_run(config).problems  # without reading: the file exists
    (problem,) = check_run(config, read_data=True).problems
    assert problem.line == 3 and "bad.jsonl:2: not valid JSON" in problem.reason
