"""The server's aggregation step without Flower: screening of faulty updates, the method
chosen by the config, and robust methods against hostile sites."""

from __future__ import annotations

import pytest
import torch

from fedmedlora.config import ScreeningSettings, aggregation_settings
from fedmedlora.federation.aggregation import weighted_average
from fedmedlora.federation.aggregator import Aggregator, SiteUpdate
from fedmedlora.federation.methods.screening import NotEnoughSites
from fedmedlora.model.lora import LoraSettings

KEYS = {"m.lora_A.weight": (2, 6), "m.lora_B.weight": (5, 2)}


def _state(g: torch.Generator, scale: float = 0.0, base=None) -> dict[str, torch.Tensor]:
    base = base or {k: torch.zeros(s) for k, s in KEYS.items()}
    return {k: base[k] + scale * torch.randn(s, generator=g) for k, s in KEYS.items()}


def _honest(g, current, true, n: int, noise: float) -> list[SiteUpdate]:
    """n sites whose updates are the true update plus a little noise."""
    return [
        SiteUpdate(
            f"h{i}",
            {
                k: current[k] + true[k] + noise * torch.randn(s, generator=g)
                for k, s in KEYS.items()
            },
            10,
        )
        for i in range(n)
    ]


def _aggregator(method: str = "fedmedlora", min_updates: int = 1, **settings) -> Aggregator:
    g = torch.Generator().manual_seed(0)
    return Aggregator(
        aggregation_settings(method=method, **settings),
        LoraSettings(rank=2, alpha=4),
        _state(g, 1.0),
        screening=ScreeningSettings(min_updates=min_updates),
    )


def test_faulty_updates_are_left_out_with_a_reason_and_the_round_goes_on():
    g = torch.Generator().manual_seed(1)
    current = _state(g, 1.0)
    good = [SiteUpdate(f"s{i}", _state(g, 0.1, current), 10.0 + i) for i in range(3)]
    nan = _state(g, 0.1, current)
    nan["m.lora_B.weight"][0, 0] = float("nan")
    huge = _state(g, 100.0, current)
    wrong = {**_state(g, 0.1, current), "m.lora_B.weight": torch.zeros(5, 3)}
    bad = [
        SiteUpdate("nan-site", nan, 10),
        SiteUpdate("huge-site", huge, 10),
        SiteUpdate("wrong-site", wrong, 10),
    ]
    agg = _aggregator()
    out = agg.aggregate(1, current, good + bad)
    reasons = " | ".join(agg.screened_out[1])
    assert "nan-site: " in reasons and "NaN" in reasons
    assert "huge-site: " in reasons and "median" in reasons
    assert "wrong-site: " in reasons and "shape" in reasons
    expected = weighted_average([u.state for u in good], [u.num_examples for u in good])
    assert all(torch.allclose(out[k], expected[k]) for k in KEYS)
    assert set(agg.weights_log[1]) == {"s0", "s1", "s2"}


def test_too_few_good_updates_skip_the_round():
    g = torch.Generator().manual_seed(2)
    current = _state(g, 1.0)
    nan = _state(g, 0.1, current)
    nan["m.lora_A.weight"][:] = float("inf")
    updates = [SiteUpdate("ok", _state(g, 0.1, current), 5), SiteUpdate("bad", nan, 5)]
    with pytest.raises(NotEnoughSites, match=r"only 1 of 2 .* at least 2 required.*bad"):
        _aggregator(min_updates=2).aggregate(1, current, updates)


@pytest.mark.parametrize("method", ["median", "trimmed-mean", "multi-krum"])
def test_robust_methods_resist_sign_flipping_sites_that_plain_averaging_follows(method):
    g = torch.Generator().manual_seed(3)
    current = _state(g, 1.0)
    true = _state(g, 1.0)
    honest = _honest(g, current, true, 6, 0.1)
    # Same norm as an honest update (so screening lets them through), opposite direction.
    hostile = [
        SiteUpdate(f"x{i}", {k: current[k] - 3 * true[k] for k in KEYS}, 10) for i in range(2)
    ]
    target = {k: current[k] + true[k] for k in KEYS}

    def error(state):
        num = sum(float((state[k] - target[k]).norm() ** 2) for k in KEYS)
        return (num / sum(float(true[k].norm() ** 2) for k in KEYS)) ** 0.5

    plain = _aggregator().aggregate(1, current, honest + hostile)
    knobs = {"median": {}, "trimmed-mean": {"trim_fraction": 0.3}, "multi-krum": {"krum_f": 2}}
    robust_agg = _aggregator(method, **knobs[method])
    robust = robust_agg.aggregate(1, current, honest + hostile)
    assert error(plain) > 0.9  # the mean is dragged 8/8 x 2/8 of the way back and more
    assert error(robust) < 0.3
    weights = robust_agg.weights_log[1]
    assert sum(weights.values()) == pytest.approx(1.0)
    if method == "multi-krum":
        assert weights["x0"] == weights["x1"] == 0.0
    else:  # coordinate-wise methods ignore the sites' own example counts
        assert list(weights.values()) == pytest.approx([1 / 8] * 8)


def test_norm_clipping_bounds_a_scaled_update():
    g = torch.Generator().manual_seed(4)
    current = _state(g, 1.0)
    true = _state(g, 1.0)
    honest = _honest(g, current, true, 2, 0.05)
    # 8x an honest update: below the screening factor of 10, so only clipping helps.
    scaled = SiteUpdate("x", {k: current[k] + 8 * true[k] for k in KEYS}, 10)
    plain = _aggregator().aggregate(1, current, [*honest, scaled])
    clipped = _aggregator("norm-clip").aggregate(1, current, [*honest, scaled])

    def pull(state):
        return sum(float((state[k] - current[k]).norm() ** 2) for k in KEYS) ** 0.5

    honest_pull = sum(float(true[k].norm() ** 2) for k in KEYS) ** 0.5
    assert pull(plain) > 3 * honest_pull
    assert pull(clipped) < 1.1 * honest_pull


def test_differential_privacy_is_accounted_round_by_round_and_capped():
    from flwr.supercore.privacy_accounting import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        SamplingMethod,
    )
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    from fedmedlora.config import PrivacySettings
    from fedmedlora.federation.methods.dp import PrivacyBudgetExhausted

    def make(max_epsilon=None):
        g = torch.Generator().manual_seed(0)
        return Aggregator(
            aggregation_settings(),
            LoraSettings(rank=2, alpha=4),
            _state(g, 1.0),
            privacy=PrivacySettings(noise_multiplier=1.0, clip_norm=0.5, max_epsilon=max_epsilon),
            population=3,
        )

    g = torch.Generator().manual_seed(5)
    current = _state(g, 1.0)
    updates = [SiteUpdate(f"s{i}", _state(g, 0.1, current), 10.0 * (i + 1)) for i in range(3)]
    agg = make()
    reference = RdpAccountant(
        PrivacyConfig(
            1e-5, 3, NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.NO_AMPLIFICATION
        )
    )
    epsilons = []
    for rnd in (1, 2, 3):
        agg.aggregate(rnd, current, updates)
        reference.compose(
            GaussianPrivacyEvent(noise_multiplier=1.0, sample_size=3, population_size=3)
        )
        epsilons.append(agg.privacy_log[rnd]["epsilon"])
        assert epsilons[-1] == pytest.approx(reference.get_privacy_spent().epsilon)
        assert list(agg.weights_log[rnd].values()) == pytest.approx([1 / 3] * 3)  # equal weights
    assert epsilons == sorted(epsilons) and epsilons[0] > 0
    assert agg.privacy_log[1]["noise_std"] == pytest.approx(1.0 * 0.5 / 3)

    # a resumed aggregator continues the same budget and the same noise stream
    resumed = make()
    resumed.load_state(agg.state())
    a, b = agg.aggregate(4, current, updates), resumed.aggregate(4, current, updates)
    assert all(torch.equal(a[k], b[k]) for k in KEYS)
    assert resumed.privacy_log[4]["epsilon"] == pytest.approx(agg.privacy_log[4]["epsilon"])

    capped = make(max_epsilon=epsilons[1] + 1e-6)
    capped.aggregate(1, current, updates)
    capped.aggregate(2, current, updates)
    with pytest.raises(PrivacyBudgetExhausted, match="max_epsilon"):
        capped.aggregate(3, current, updates)


@pytest.mark.parametrize("method", ["fedmedlora", "fedmedlora+", "norm-clip", "exact", "fedavgm"])
def test_no_site_gets_more_than_max_site_weight_whatever_it_claims(method):
    """One site claims 10^8 examples (or, under Fed-MedLoRA+, a far lower validation
    loss): its weight is capped at 0.5 by default with 3 or more sites."""
    g = torch.Generator().manual_seed(5)
    current = _state(g, 1.0)
    updates = [
        SiteUpdate(f"s{i}", _state(g, 0.1, current), n, {"val-loss": loss})
        for i, (n, loss) in enumerate([(10**8, 0.0), (10, 5.0), (30, 5.0), (20, 5.0)])
    ]
    agg = _aggregator(method)
    agg.aggregate(1, current, updates)
    weights = agg.weights_log[1]
    assert weights["s0"] == pytest.approx(0.5)
    assert sum(weights.values()) == pytest.approx(1.0)
    if method != "fedmedlora+":  # the others keep their example proportions
        assert weights["s2"] == pytest.approx(3 * weights["s1"])


def test_max_site_weight_is_a_setting_and_two_sites_are_not_capped_by_default():
    g = torch.Generator().manual_seed(6)
    current = _state(g, 1.0)
    two = [
        SiteUpdate("a", _state(g, 0.1, current), 90),
        SiteUpdate("b", _state(g, 0.1, current), 10),
    ]
    agg = _aggregator()
    agg.aggregate(1, current, two)
    assert agg.weights_log[1] == pytest.approx({"a": 0.9, "b": 0.1})
    agg.max_site_weight = 0.6
    agg.aggregate(2, current, two)
    assert agg.weights_log[2] == pytest.approx({"a": 0.6, "b": 0.4})


def test_multi_krum_caps_the_weights_of_the_updates_it_selects():
    g = torch.Generator().manual_seed(7)
    current = _state(g, 1.0)
    true = _state(g, 1.0)
    honest = _honest(g, current, true, 5, 0.1)
    honest[0].num_examples = 10**8
    agg = _aggregator("multi-krum", krum_f=1)
    agg.aggregate(1, current, honest)
    weights = agg.weights_log[1]
    assert weights["h0"] == pytest.approx(0.5)  # selected, and capped among the selected
    assert sum(weights.values()) == pytest.approx(1.0)
