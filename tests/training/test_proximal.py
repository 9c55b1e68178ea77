import pytest
import torch

from fedmedlora.training.proximal import proximal_term


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(torch.float32)


def test_value_by_hand():
    w = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[3.0]])}
    g = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([[1.0]])}
    # (0.5 / 2) · (1 + 4 + 4) = 2.25
    assert proximal_term(w, g, 0.5).item() == pytest.approx(2.25)


def test_gradient_is_mu_times_the_difference():
    for seed in range(5):
        g = gen(seed)
        params = {k: randn(g, *s).requires_grad_() for k, s in {"a": (3, 4), "b": (5,)}.items()}
        glob = {k: randn(g, *v.shape).requires_grad_() for k, v in params.items()}
        mu = 0.01 * (seed + 1)
        proximal_term(params, glob, mu).backward()
        for k, w in params.items():
            assert torch.allclose(w.grad, mu * (w.detach() - glob[k].detach()), atol=1e-7)
            assert glob[k].grad is None  # the global model is a constant


def test_zero_mu_and_equal_weights_give_zero():
    w = {"a": torch.ones(3, requires_grad=True)}
    assert proximal_term(w, {"a": torch.zeros(3)}, 0.0).item() == 0.0
    assert proximal_term(w, {"a": torch.ones(3)}, 1.0).item() == 0.0


@pytest.mark.parametrize(
    ("params", "glob", "mu", "message"),
    [
        ({"a": torch.ones(1)}, {"a": torch.ones(1)}, -1.0, "mu"),
        ({"a": torch.ones(1)}, {"a": torch.ones(1)}, float("nan"), "mu"),
        ({}, {}, 1.0, "no parameters"),
        ({"a": torch.ones(1)}, {"b": torch.ones(1)}, 1.0, "different keys"),
        ({"a": torch.ones(1)}, {"a": torch.ones(2)}, 1.0, "shape"),
    ],
)
def test_rejects_bad_input(params, glob, mu, message):
    with pytest.raises(ValueError, match=message):
        proximal_term(params, glob, mu)
