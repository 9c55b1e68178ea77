import io
import math

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedmedlora.federation.methods.server_opt import ServerOptSettings, step

from .helpers import adapter, gen


def _rounds(seed: int, n: int):
    """A global adapter and n rounds of aggregates near it."""
    g = gen(seed)
    x0 = adapter(g, 2)
    aggs = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in x0.items()}]
    for _ in range(n - 1):
        aggs.append({k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in x0.items()})
    return x0, aggs


def test_fedavgm_with_lr_1_and_no_momentum_is_plain_averaging():
    x, aggs = _rounds(0, 3)
    settings, state = ServerOptSettings(method="fedavgm", lr=1.0), {}
    for agg in aggs:
        x, state = step(x, agg, state, settings)
        assert all(torch.allclose(x[k], agg[k], atol=1e-7) for k in agg)


def _reference(xs, aggs, settings: ServerOptSettings) -> list[float]:
    """Reddi et al. Algorithm 2, one coordinate at a time in plain Python floats."""
    out = []
    for x0, deltas in zip(xs, aggs, strict=True):
        x, m = x0, 0.0
        v = settings.tau**2 if settings.initial_v is None else settings.initial_v
        for t, agg in enumerate(deltas, start=1):
            d = agg - x
            if settings.method == "fedavgm":
                m = settings.momentum * m + d
                x = x + settings.lr * m
                continue
            m = settings.beta1 * m + (1 - settings.beta1) * d
            if settings.method == "fedadam":
                v = settings.beta2 * v + (1 - settings.beta2) * d * d
            else:
                v = v - (1 - settings.beta2) * d * d * math.copysign(1, v - d * d) * (v != d * d)
            lr = settings.lr
            if settings.bias_correction:
                lr *= math.sqrt(1 - settings.beta2**t) / (1 - settings.beta1**t)
            x = x + lr * m / (math.sqrt(v) + settings.tau)
        out.append(x)
    return out


def test_adam_first_step_by_hand():
    # x = 1, aggregate 1.5: Δ = 0.5, m = 0.05, v = 0.99·1e-6 + 0.01·0.25 = 0.00250099
    settings = ServerOptSettings(method="fedadam", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    x, state = step({"w": torch.tensor([1.0])}, {"w": torch.tensor([1.5])}, {}, settings)
    expected = 1 + 0.1 * 0.05 / (math.sqrt(0.00250099) + 1e-3)
    assert x["w"].item() == pytest.approx(expected, rel=1e-6)
    assert state["m/w"].item() == pytest.approx(0.05)
    assert state["v/w"].item() == pytest.approx(0.00250099)
    assert int(state["step"]) == 1


def test_yogi_first_step_by_hand():
    # v0 = 0 < Δ² = 0.25: v = 0 + 0.01·0.25; with m = 0.05 that is Adam's step from v0 = 0
    settings = ServerOptSettings(method="fedyogi", lr=0.1, initial_v=0.0)
    x, state = step({"w": torch.tensor([1.0])}, {"w": torch.tensor([1.5])}, {}, settings)
    assert state["v/w"].item() == pytest.approx(0.0025)
    assert x["w"].item() == pytest.approx(1 + 0.1 * 0.05 / (0.05 + 1e-3), rel=1e-6)


@pytest.mark.parametrize(
    "settings",
    [
        ServerOptSettings(method="fedavgm", lr=0.7, momentum=0.9),
        ServerOptSettings(method="fedadam", lr=0.01),
        ServerOptSettings(method="fedadam", lr=0.01, bias_correction=True, initial_v=0.0),
        ServerOptSettings(method="fedyogi", lr=0.01, beta2=0.5, tau=1e-2),
    ],
)
def test_several_rounds_match_the_reference(settings):
    x, aggs = _rounds(1, 4)
    x0, state = x, {}
    for agg in aggs:
        x, state = step(x, agg, state, settings)
    for key in x0:
        flat = [a[key].double().flatten().tolist() for a in aggs]
        expected = _reference(
            x0[key].double().flatten().tolist(), list(zip(*flat, strict=True)), settings
        )
        assert torch.allclose(
            x[key].double().flatten(), torch.tensor(expected, dtype=torch.float64), atol=1e-6
        )
    assert int(state["step"]) == 4


@pytest.mark.parametrize("method", ["fedavgm", "fedadam", "fedyogi"])
def test_state_round_trips_through_a_checkpoint(method):
    settings = ServerOptSettings(method=method, lr=0.05, momentum=0.5)
    x, aggs = _rounds(2, 3)
    straight, state = x, {}
    for agg in aggs:
        straight, state = step(straight, agg, state, settings)

    resumed, saved = step(x, aggs[0], {}, settings)
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    restored = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    resumed, saved = step(resumed, aggs[1], restored, settings)
    restored = st_load(st_save(saved))  # flat dict of tensors: safetensors works too
    resumed, state2 = step(resumed, aggs[2], restored, settings)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert state.keys() == state2.keys() and all(torch.equal(state[k], state2[k]) for k in state)


def test_inputs_are_not_modified():
    x, (agg,) = _rounds(3, 1)
    copies = {k: v.clone() for k, v in x.items()}
    _, state = step(x, agg, {}, ServerOptSettings(method="fedadam", lr=0.1))
    before = {k: v.clone() for k, v in state.items()}
    step(x, agg, state, ServerOptSettings(method="fedadam", lr=0.1))
    assert all(torch.equal(x[k], copies[k]) for k in x)
    assert all(torch.equal(state[k], before[k]) for k in state)


def test_refuses_state_that_does_not_fit():
    x, (agg,) = _rounds(4, 1)
    adam = ServerOptSettings(method="fedadam", lr=0.1)
    _, momentum_state = step(x, agg, {}, ServerOptSettings(method="fedavgm", lr=1.0))
    with pytest.raises(ValueError, match="does not fit"):
        step(x, agg, momentum_state, adam)  # switched method: no v
    _, state = step(x, agg, {}, adam)
    key = next(iter(x))
    with pytest.raises(ValueError, match="has shape"):
        step(x, agg, {**state, f"m/{key}": torch.zeros(1)}, adam)  # e.g. the rank changed
    with pytest.raises(ValueError, match="different keys"):
        step(x, {**agg, "extra": torch.zeros(1)}, {}, adam)
    with pytest.raises(ValueError, match="aggregate shape"):
        step(x, {**agg, key: torch.zeros(1)}, {}, adam)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "fedadam"},  # lr is required
        {"method": "fedadam", "lr": 0.0},
        {"method": "fedavgm", "lr": 1.0, "momentum": 1.0},
        {"method": "fedyogi", "lr": 1.0, "beta2": 1.0},
        {"method": "fedyogi", "lr": 1.0, "tau": 0.0},
        {"method": "sgd", "lr": 1.0},
        {"method": "fedadam", "lr": 1.0, "betas": (0.9, 0.99)},
    ],
)
def test_settings_validation(kwargs):
    with pytest.raises(ValidationError):
        ServerOptSettings(**kwargs)
