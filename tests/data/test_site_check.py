"""A site config checked on its own, before anything loads: what a SuperNode runs first on
the site config it was given, each problem with its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmedlora.data.site_check import check_site_config
from fedmedlora.errors import ConfigProblems

BAD = Path(__file__).parents[1] / "cli" / "bad_configs"


def test_a_top_level_that_is_not_a_mapping_is_named(tmp_path):
    bad = tmp_path / "site.yaml"
    bad.write_text("- north\n")
    with pytest.raises(ConfigProblems) as caught:
        check_site_config(bad)
    assert [str(p) for p in caught.value.problems] == [
        f"{bad}: (top): Input should be a valid dictionary or instance of SiteSource"
    ]


def test_a_supernode_site_config_is_checked_with_lines(tmp_path):
    good = tmp_path / "site.yaml"
    good.write_text(f"name: north\ntrain: {BAD / 'data' / 'north.jsonl'}\n")
    assert check_site_config(good).name == "north"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: north\ntrain: nowhere.jsonl\nformat: bratt\nentity_types: [x]\n")
    with pytest.raises(ConfigProblems) as caught:
        check_site_config(bad)
    assert [p.line for p in caught.value.problems] == [2, 3, 4]
    assert check_site_config(good, schema_name=None).name == "north"
    bad.write_text("name: north\ntrian: a.jsonl\n")
    with pytest.raises(ConfigProblems) as caught:
        check_site_config(bad)
    assert {str(p) for p in caught.value.problems} == {
        f"{bad}: train: Field required",
        f"{bad}:2: trian: unknown key 'trian'",
    }
