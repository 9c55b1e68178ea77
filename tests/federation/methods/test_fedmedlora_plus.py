import math

import pytest
import torch

from fedmedlora.federation.methods.base import SiteUpdate
from fedmedlora.federation.methods.fedmedlora_plus import FedMedLoRAPlus, PlusSettings, plus_weights
from fedmedlora.model.lora import LoraSettings

from .helpers import gen


def test_hand_computed_softmax_and_mix():
    # softmax(-[0, ln 3]) = [3/4, 1/4]; with counts [1, 3] and size_mix 0.5: [0.5, 0.5]
    assert plus_weights([0.0, math.log(3)], [1, 3]) == pytest.approx([0.75, 0.25])
    assert plus_weights([0.0, math.log(3)], [1, 3], size_mix=0.5) == pytest.approx([0.5, 0.5])
    assert plus_weights([5.0, 1.0], [10, 30], size_mix=1.0) == pytest.approx([0.25, 0.75])
    # T = 2 halves the loss gap: softmax(-[0, 2 ln 3] / 2) = [3/4, 1/4]
    assert plus_weights([0.0, 2 * math.log(3)], [1, 1], temperature=2.0) == pytest.approx(
        [0.75, 0.25]
    )


def test_random_weights_sum_to_one_and_favour_lower_loss():
    for seed in range(50):
        g = gen(seed)
        k = int(torch.randint(1, 7, (1,), generator=g))
        losses = (torch.rand(k, generator=g, dtype=torch.float64) * 5).tolist()
        counts = torch.randint(0, 100, (k,), generator=g).tolist()
        counts[0] += 1  # a positive total
        temperature = float(torch.rand(1, generator=g)) * 3 + 0.05
        mix = float(torch.rand(1, generator=g))
        w = plus_weights(losses, counts, temperature, mix)
        assert math.isclose(sum(w), 1.0, abs_tol=1e-12)
        assert all(x >= 0 for x in w)
        soft = plus_weights(losses, counts, temperature)
        for i in range(k):
            for j in range(k):
                if losses[i] < losses[j]:
                    assert soft[i] > soft[j]
                    if counts[i] >= counts[j]:  # equal data: the better adapter weighs more
                        assert w[i] > w[j]


def test_temperature_limits():
    assert plus_weights([1.0, 2.0, 3.0], [1, 1, 1], temperature=1e6) == pytest.approx(
        [1 / 3] * 3, abs=1e-5
    )
    assert plus_weights([1.0, 2.0, 3.0], [1, 1, 1], temperature=1e-3) == [1.0, 0.0, 0.0]


def test_numerically_stable_for_huge_losses_and_tiny_temperatures():
    w = plus_weights([1e6, 1e6 + math.log(3)], [1, 1])
    assert w == pytest.approx([0.75, 0.25])
    w = plus_weights([1e300, -1e300, 0.0], [1, 1, 1], temperature=1e-300)
    assert w == [0.0, 1.0, 0.0]
    w = plus_weights([2.0, 2.0], [1, 1], temperature=1e-300)  # a tie stays a tie
    assert w == [0.5, 0.5]


@pytest.mark.parametrize(
    ("losses", "counts", "kwargs", "message"),
    [
        ([], [], {}, "no sites"),
        ([1.0], [1, 2], {}, "1 losses but 2"),
        ([float("nan"), 1.0], [1, 1], {}, "finite"),
        ([float("inf"), 1.0], [1, 1], {}, "finite"),
        ([1.0, 1.0], [1, -1], {}, "non-negative"),
        ([1.0, 1.0], [1, float("nan")], {}, "non-negative"),
        ([1.0], [1], {"temperature": 0.0}, "temperature"),
        ([1.0], [1], {"temperature": -1.0}, "temperature"),
        ([1.0], [1], {"temperature": float("nan")}, "temperature"),
        ([1.0], [1], {"size_mix": 1.5}, "size_mix"),
        ([1.0], [1], {"size_mix": -0.1}, "size_mix"),
        ([1.0, 2.0], [0, 0], {"size_mix": 0.5}, "positive example total"),
    ],
)
def test_rejects_bad_input(losses, counts, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plus_weights(losses, counts, **kwargs)


def test_the_method_weights_sites_by_their_reported_validation_loss():
    settings = PlusSettings(temperature=0.5, size_mix=0.2)
    plus = FedMedLoRAPlus(settings, LoraSettings(), {})
    losses, counts = [0.3, 1.2, 0.7], [10, 50, 20]
    pairs = enumerate(zip(losses, counts, strict=True))
    updates = [SiteUpdate(f"s{i}", {}, n, {"val-loss": v}) for i, (v, n) in pairs]
    assert plus.weights(updates) == plus_weights(losses, counts, 0.5, 0.2)
    assert plus.weights(updates) != [n / sum(counts) for n in counts]  # not Fed-MedLoRA's
    updates[1].metrics.clear()
    with pytest.raises(ValueError, match=r"sites \['s1'\] reported no validation loss"):
        plus.weights(updates)
