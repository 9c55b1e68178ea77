import pytest
import torch

from fedmedlora.federation.aggregation import weighted_average


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
