import itertools

import pytest
import torch

from fedmedlora.federation.aggregation import cap_weights, weighted_average


def test_weighted_average_by_examples():
    a = {"x.lora_A.weight": torch.tensor([[1.0, 2.0]]), "x.lora_B.weight": torch.tensor([0.0])}
    b = {"x.lora_A.weight": torch.tensor([[3.0, 6.0]]), "x.lora_B.weight": torch.tensor([4.0])}
    out = weighted_average([a, b], [10, 30])
    # (1*10 + 3*30) / 40 = 2.5 ; (2*10 + 6*30)/40 = 5 ; (0*10 + 4*30)/40 = 3
    assert torch.equal(out["x.lora_A.weight"], torch.tensor([[2.5, 5.0]]))
    assert torch.equal(out["x.lora_B.weight"], torch.tensor([3.0]))
    assert out["x.lora_A.weight"].dtype == torch.float32


def test_equal_weights_is_the_mean_and_single_site_is_identity():
    states = [{"w": torch.randn(4, 3)} for _ in range(3)]
    mean = weighted_average(states, [1, 1, 1])["w"]
    assert torch.allclose(mean, torch.stack([s["w"] for s in states]).mean(0), atol=1e-6)
    assert torch.equal(weighted_average(states[:1], [7])["w"], states[0]["w"])


def test_factors_are_averaged_separately_not_their_product():
    a = {"A": torch.tensor([[1.0]]), "B": torch.tensor([[1.0]])}
    b = {"A": torch.tensor([[3.0]]), "B": torch.tensor([[3.0]])}
    out = weighted_average([a, b], [1, 1])
    assert (out["B"] @ out["A"]).item() == 4.0  # mean(B) mean(A), not mean(BA) = 5


@pytest.mark.parametrize(
    ("states", "weights", "message"),
    [
        ([], [], "nothing to aggregate"),
        ([{"w": torch.zeros(1)}], [1, 2], "1 states but 2 weights"),
        ([{"w": torch.zeros(1)}, {"v": torch.zeros(1)}], [1, 1], "different keys"),
        ([{"w": torch.zeros(1)}, {"w": torch.zeros(2)}], [1, 1], "shape"),
        ([{"w": torch.zeros(1)}], [0], "positive sum"),
    ],
)
def test_rejects_inconsistent_inputs(states, weights, message):
    with pytest.raises(ValueError, match=message):
        weighted_average(states, weights)


@pytest.mark.parametrize(
    ("weights", "cap", "expected"),
    [
        ([1, 1, 1], 0.5, [1 / 3] * 3),  # nothing above the cap: only normalised
        ([10**9, 10, 10], 0.5, [0.5, 0.25, 0.25]),  # one claim of 10^9 examples
        # Capping the first lifts the second over the cap: it must be capped too.
        ([100, 60, 10, 10, 10, 10], 0.3, [0.3, 0.3, 0.1, 0.1, 0.1, 0.1]),
        ([8, 1, 1], 0.4, [0.4, 0.3, 0.3]),
        ([5, 0, 5, 90], 0.5, [0.25, 0.0, 0.25, 0.5]),  # a zero weight stays zero
        ([3, 1], 0.4, [0.5, 0.5]),  # 2 x 0.4 < 1: the nearest is equal weights
        ([3, 1, 0], 0.5, [0.5, 0.5, 0.0]),
        ([7], 0.5, [1.0]),
        ([3, 1], 1.0, [0.75, 0.25]),  # cap 1: plain normalisation
    ],
)
def test_weights_are_capped_and_renormalised_until_none_exceeds_the_cap(weights, cap, expected):
    out = cap_weights(weights, cap)
    assert out == pytest.approx(expected)
    assert sum(out) == pytest.approx(1.0)
    positive = sum(w > 0 for w in weights)
    if positive * cap > 1:
        assert max(out) <= cap * (1 + 1e-12)


def test_capping_keeps_the_order_of_weights_and_is_idempotent():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        weights = (torch.rand(7, generator=g) ** 4 * 100).tolist()
        out = cap_weights(weights, 0.25)
        assert max(out) <= 0.25 * (1 + 1e-12) and sum(out) == pytest.approx(1.0)
        order = sorted(range(7), key=lambda i: weights[i])
        assert all(out[a] <= out[b] + 1e-12 for a, b in itertools.pairwise(order))
        assert cap_weights(out, 0.25) == pytest.approx(out)


@pytest.mark.parametrize(
    ("weights", "cap"), [([], 0.5), ([1, float("nan")], 0.5), ([-1, 2], 0.5), ([1, 1], 0.0)]
)
def test_capping_refuses_weights_or_caps_that_mean_nothing(weights, cap):
    with pytest.raises(ValueError):
        cap_weights(weights, cap)
