"""Run config rules that span sections: what an aggregation method needs from the sites."""

from __future__ import annotations

import pytest

from fedmedlora.config import load_config
from fedmedlora.errors import ConfigError


def test_aggregation_method_is_one_option_with_site_side_defaults():
    assert load_config().federation.aggregation.method == "fedmedlora"
    plus = load_config(None, {"federation.aggregation.method": "fedmedlora+"})
    assert plus.train.validation_fraction == 0.1  # sites need held-out documents
    assert plus.recipe().train.validation_fraction == 0.1  # and the recipe carries it
    prox = load_config(None, {"federation.aggregation.method": "fedprox"})
    assert prox.train.proximal_mu == 0.01
    chosen = load_config(
        None, {"federation.aggregation.method": "fedprox", "train.proximal_mu": 0.5}
    )
    assert chosen.train.proximal_mu == 0.5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"federation.aggregation.method": "fedbogus"}, "federation.aggregation.method"),
        (
            {"federation.privacy.noise_multiplier": 1.0, "federation.aggregation.method": "median"},
            "differential privacy needs an averaging method",
        ),
        (
            {
                "federation.aggregation.method": "fedmedlora+",
                "federation.aggregation.validation": "server",
            },
            "needs server_validation",
        ),
        ({"data.synthetic.lora_ranks": {"riverside": 4}}, "need aggregation method exact"),
        (
            {
                "data.synthetic.lora_ranks": {"riverside": 64},
                "federation.aggregation.method": "exact",
            },
            "exceed lora.rank",
        ),
        (
            {
                "data.synthetic.lora_ranks": {"elsewhere": 4},
                "federation.aggregation.method": "exact",
            },
            "unknown sites",
        ),
    ],
)
def test_inconsistent_aggregation_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_site_ranks_are_allowed_with_exact_aggregation():
    config = load_config(
        None,
        {"data.synthetic.lora_ranks": {"riverside": 4}, "federation.aggregation.method": "exact"},
    )
    assert config.data.site_ranks() == {"riverside": 4}


def test_filled_in_settings_never_leak_into_other_configs():
    from fedmedlora.config import RunConfig

    assert (
        RunConfig.model_validate(
            {"federation": {"aggregation": {"method": "fedprox"}}}
        ).train.proximal_mu
        == 0.01
    )
    assert RunConfig.model_validate({}).train.proximal_mu == 0.0  # defaults are not shared
