import pytest
import torch
from torch.overrides import TorchFunctionMode

from fedmedlora.federation.aggregation import weighted_average
from fedmedlora.federation.methods.exact import (
    FILL_ROW_NORM,
    exact_aggregate,
    exact_factors,
    truncate,
)

from .helpers import PREFIX, adapter, best_rank, close, dense, gen, randint, randn


def random_sites(seed: int, dtype: torch.dtype = torch.float32):
    """K sites' factors for one module, of random shapes (out or in may be < Σ r_k),
    ranks, weights (some zero) and scalings."""
    g = gen(seed)
    k = randint(g, 1, 4)
    out_dim, in_dim = randint(g, 1, 9), randint(g, 1, 9)
    ranks = [randint(g, 1, 4) for _ in range(k)]
    bs = [randn(g, out_dim, r, dtype=dtype) for r in ranks]
    as_ = [randn(g, r, in_dim, dtype=dtype) for r in ranks]
    weights = (torch.rand(k, generator=g, dtype=torch.float64) * 10).tolist()
    if k > 1 and seed % 3 == 0:
        weights[0] = 0.0
    scalings = (torch.rand(k, generator=g, dtype=torch.float64) * 3 + 0.1).tolist()
    target_scaling = float(torch.rand(1, generator=g, dtype=torch.float64)) * 3 + 0.1
    return bs, as_, weights, scalings, target_scaling


def delta(bs, as_, weights, scalings) -> torch.Tensor:
    total = sum(weights)
    return sum(
        dense(b, a, w / total * s) for b, a, w, s in zip(bs, as_, weights, scalings, strict=True)
    )


def test_full_rank_is_exactly_the_weighted_sum_of_products():
    for seed in range(40):
        bs, as_, weights, scalings, ts = random_sites(seed)
        f = exact_factors(bs, as_, weights, scalings, target_scaling=ts)
        big_r = sum(a.shape[0] for a in as_)
        assert f.b.shape == (bs[0].shape[0], big_r) and f.a.shape == (big_r, as_[0].shape[1])
        assert f.b.dtype == f.a.dtype == torch.float32
        assert close(dense(f.b, f.a, ts), delta(bs, as_, weights, scalings)), seed


def test_float64_inputs_are_exact_to_float64_precision():
    for seed in range(10):
        bs, as_, weights, scalings, ts = random_sites(seed, torch.float64)
        f = exact_factors(bs, as_, weights, scalings, target_scaling=ts)
        assert f.b.dtype == torch.float64
        assert close(dense(f.b, f.a, ts), delta(bs, as_, weights, scalings), rtol=1e-12)


def test_lower_rank_is_the_best_approximation():
    checked = 0
    for seed in range(40):
        bs, as_, weights, scalings, ts = random_sites(seed)
        target = delta(bs, as_, weights, scalings)
        sing = torch.linalg.svdvals(target)
        for rank in range(1, sing.shape[0] + 1):
            f = exact_factors(bs, as_, weights, scalings, target_rank=rank, target_scaling=ts)
            assert f.b.shape[1] == f.a.shape[0] == rank
            # The error of the best rank-r approximation is always sqrt(Σ_{i>r} σ_i²) ...
            err = float((dense(f.b, f.a, ts) - target).norm())
            assert abs(err - float(sing[rank:].norm())) <= 1e-5 * max(float(sing[0]), 1), seed
            # ... and the approximation itself is unique where σ_r > σ_{r+1} clearly.
            if rank == sing.shape[0] or sing[rank - 1] - sing[rank] > 1e-2 * sing[0]:
                assert close(dense(f.b, f.a, ts), best_rank(target, rank), rtol=1e-4), seed
                checked += 1
    assert checked > 50


def test_exact_when_the_update_has_low_rank():
    for seed in range(20):
        g = gen(seed)
        true_rank, out_dim, in_dim = randint(g, 1, 3), 12, 10
        basis = randn(g, out_dim, true_rank)  # every site's B lies in one column space
        ranks = [randint(g, 2, 5) for _ in range(3)]
        bs = [basis @ randn(g, true_rank, r) for r in ranks]
        as_ = [randn(g, r, in_dim) for r in ranks]
        weights, scalings = [1.0, 2.0, 3.0], [0.5, 1.0, 2.0]
        target = delta(bs, as_, weights, scalings)
        f = exact_factors(bs, as_, weights, scalings, target_rank=true_rank, target_scaling=1.5)
        assert close(dense(f.b, f.a, 1.5), target), seed
        if true_rank > 1:  # while one rank less cannot be exact
            f = exact_factors(bs, as_, weights, scalings, target_rank=true_rank - 1)
            assert not close(dense(f.b, f.a), target, rtol=1e-3)


def test_singular_values_are_split_evenly_and_padding_is_zero_without_fill():
    g = gen(1)
    bs, as_ = [randn(g, 7, 2), randn(g, 7, 2)], [randn(g, 2, 3), randn(g, 2, 3)]
    kwargs = {"target_rank": 6, "target_scaling": 0.5}
    f = exact_factors(bs, as_, [1, 1], [2.0, 2.0], fill_dead=False, **kwargs)
    # ΔW is 7×3, so at most 3 directions; the other 3 are zero columns / rows.
    assert f.b.shape == (7, 6) and f.a.shape == (6, 3)
    assert torch.equal(f.b[:, 3:], torch.zeros(7, 3)) and torch.equal(f.a[3:], torch.zeros(3, 3))
    # √S on each side: column norms of B equal row norms of A
    assert torch.allclose(f.b.norm(dim=0), f.a.norm(dim=1), rtol=1e-5)
    assert close(dense(f.b, f.a, 0.5), delta(bs, as_, [1, 1], [2.0, 2.0]))
    # By default the same live directions, and the spare A rows are refilled (in = 3 < 6:
    # no room for orthogonal ones, so random directions) at PEFT's row norm.
    filled = exact_factors(bs, as_, [1, 1], [2.0, 2.0], **kwargs)
    assert torch.equal(filled.b, f.b) and torch.equal(filled.a[:3], f.a[:3])
    assert torch.allclose(filled.a[3:].norm(dim=1), torch.full((3,), FILL_ROW_NORM))


def test_weights_are_normalised_and_zero_weight_sites_do_not_count():
    bs, as_, _, scalings, _ = random_sites(4)
    while len(bs) < 2:
        bs, as_, _, scalings, _ = random_sites(len(bs) + 100)
    weights = [2.0] * len(bs)
    one = exact_factors(bs, as_, weights, scalings)
    ten = exact_factors(bs, as_, [10 * w for w in weights], scalings)
    assert close(dense(one.b, one.a), dense(ten.b, ten.a))
    dropped = exact_factors(bs, as_, [0.0, *weights[1:]], scalings)
    without = exact_factors(bs[1:], as_[1:], weights[1:], scalings[1:])
    assert close(dense(dropped.b, dropped.a), dense(without.b, without.a))
    assert not close(dense(dropped.b, dropped.a), dense(one.b, one.a))


def test_all_zero_updates_give_a_zero_product():
    for fill_dead in (True, False):
        f = exact_factors(
            [torch.zeros(4, 2)] * 2, [torch.ones(2, 3)] * 2, [1, 1], [1.0, 1.0], fill_dead=fill_dead
        )
        assert not f.b.isnan().any() and not f.a.isnan().any()
        assert torch.equal(f.b, torch.zeros(4, 4))
        assert torch.equal(dense(f.b, f.a), torch.zeros(4, 3, dtype=torch.float64))
        assert (f.a.norm(dim=1) > 0).all() == fill_dead


class _LargestOutput(TorchFunctionMode):
    """Records the largest tensor any torch call returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_never_forms_the_dense_update():
    g = gen(0)
    out_dim, in_dim, rank = 300, 200, 4
    bs = [randn(g, out_dim, rank) for _ in range(3)]
    as_ = [randn(g, rank, in_dim) for _ in range(3)]
    with _LargestOutput() as probe:
        exact_factors(bs, as_, [1, 2, 3], [1.0, 1.0, 1.0], target_rank=8)
    assert 0 < probe.largest < out_dim * in_dim / 10  # factors are ≤ 300×12
    with _LargestOutput() as control:  # the probe does see a dense product
        bs[0] @ as_[0]
    assert control.largest == out_dim * in_dim


@pytest.mark.parametrize(
    ("bs", "as_", "weights", "scalings", "kwargs", "message"),
    [
        ([torch.ones(4, 2)], [torch.ones(3, 5)], [1], [1.0], {}, "expected B"),
        ([torch.ones(4, 2)] * 2, [torch.ones(2, 5), torch.ones(2, 6)], [1, 1], [1, 1], {}, "ΔW"),
        ([torch.ones(4, 2)], [torch.ones(2, 5)], [1, 1], [1.0], {}, "one B, A"),
        ([torch.ones(4, 2)], [torch.ones(2, 5)], [-1], [1.0], {}, "non-negative"),
        ([torch.ones(4, 2)], [torch.ones(2, 5)], [0], [1.0], {}, "positive sum"),
        ([torch.ones(4, 2)], [torch.ones(2, 5)], [1], [0.0], {}, "scalings"),
        ([torch.ones(4, 2)], [torch.ones(2, 5)], [1], [1.0], {"target_scaling": -1}, "target_s"),
        ([torch.ones(4, 2)], [torch.ones(2, 5)], [1], [1.0], {"target_rank": 0}, "target_rank"),
    ],
)
def test_exact_factors_rejects_bad_input(bs, as_, weights, scalings, kwargs, message):
    with pytest.raises(ValueError, match=message):
        exact_factors(bs, as_, weights, scalings, **kwargs)


def test_truncate_matches_dense_svd_truncation():
    checked = 0
    for seed in range(30):
        g = gen(seed)
        out_dim, in_dim, big_r = randint(g, 2, 12), randint(g, 2, 12), randint(g, 2, 8)
        b, a = randn(g, out_dim, big_r), randn(g, big_r, in_dim)
        scaling, target = 2.0, 0.25
        product = dense(b, a, scaling)
        sing = torch.linalg.svdvals(product)
        for rank in range(1, big_r + 2):
            f = truncate(b, a, rank, scaling=scaling, target_scaling=target)
            assert f.b.shape == (out_dim, rank) and f.a.shape == (rank, in_dim)
            if rank >= sing.shape[0]:
                assert close(dense(f.b, f.a, target), product), seed  # nothing to cut
            elif sing[rank - 1] - sing[rank] > 1e-2 * sing[0]:
                assert close(dense(f.b, f.a, target), best_rank(product, rank), rtol=1e-4)
                checked += 1
        same = truncate(b, a, 1)  # default: the same scaling on both sides
        assert close(dense(same.b, same.a), best_rank(dense(b, a), 1), rtol=1e-4) or (
            sing[0] - sing[1] <= 1e-2 * sing[0]
        )
    assert checked > 20


def _states(seed: int, ranks: list[int]):
    g = gen(seed)
    states = [adapter(g, r) for r in ranks]
    for s in states:
        s[f"{PREFIX}.q_proj.lora_B.bias"] = randn(g, 6)
    return states


def test_exact_aggregate_handles_every_pair_and_averages_the_rest():
    ranks, weights, scalings, ts = [2, 3, 1], [5.0, 1.0, 2.0], [4.0, 8 / 3, 8.0], 0.5
    states = _states(0, ranks)
    out = exact_aggregate(states, weights, scalings=scalings, target_scaling=ts)
    assert list(out) == list(states[0])
    assert all(v.dtype == torch.float32 for v in out.values())
    p = [w / sum(weights) for w in weights]
    for module in ("q_proj", "v_proj"):
        a_key, b_key = f"{PREFIX}.{module}.lora_A.weight", f"{PREFIX}.{module}.lora_B.weight"
        assert out[a_key].shape[0] == out[b_key].shape[1] == sum(ranks)
        expected = delta([s[b_key] for s in states], [s[a_key] for s in states], p, scalings)
        assert close(dense(out[b_key], out[a_key], ts), expected)
    head_keys = ("base_model.model.score.weight", "base_model.model.score.bias")
    heads = weighted_average([{k: s[k] for k in head_keys} for s in states], weights)
    for key in head_keys:
        assert torch.equal(out[key], heads[key])
    bias = f"{PREFIX}.q_proj.lora_B.bias"  # PEFT adds s·bias: Σ p_k s_k bias_k / ts
    expected_bias = sum(
        pk * sk / ts * s[bias].double() for pk, sk, s in zip(p, scalings, states, strict=True)
    )
    assert torch.allclose(out[bias].double(), expected_bias, atol=1e-6)


def test_exact_aggregate_at_a_target_rank():
    states = _states(1, [4, 4])
    out = exact_aggregate(states, [1, 1], scalings=[1.0, 1.0], target_rank=3, target_scaling=1.0)
    a_key, b_key = f"{PREFIX}.q_proj.lora_A.weight", f"{PREFIX}.q_proj.lora_B.weight"
    assert out[b_key].shape == (6, 3) and out[a_key].shape == (3, 5)
    target = delta([s[b_key] for s in states], [s[a_key] for s in states], [1, 1], [1, 1])
    assert close(dense(out[b_key], out[a_key]), best_rank(target, 3), rtol=1e-4)


def test_exact_aggregate_rejects_bad_states():
    states = _states(2, [2, 2])
    with pytest.raises(ValueError, match="different keys"):
        exact_aggregate(
            [states[0], {**states[1], "x": torch.zeros(1)}],
            [1, 1],
            scalings=[1, 1],
            target_scaling=1,
        )
    dora = [{**s, f"{PREFIX}.q_proj.lora_magnitude_vector": torch.ones(6)} for s in states]
    with pytest.raises(ValueError, match="DoRA"):
        exact_aggregate(dora, [1, 1], scalings=[1, 1], target_scaling=1)
    broken = {**states[1], f"{PREFIX}.q_proj.lora_A.weight": torch.zeros(3, 5)}
    with pytest.raises(ValueError, match="site 1"):
        exact_aggregate([states[0], broken], [1, 1], scalings=[1, 1], target_scaling=1)
    with pytest.raises(ValueError, match="2 states but 1 weights"):
        exact_aggregate(states, [1], scalings=[1, 1], target_scaling=1)
    with pytest.raises(ValueError, match="non-negative"):
        exact_aggregate(states, [1, -1], scalings=[1, 1], target_scaling=1)


# Dead directions: spare rank beyond ΔW's numerical rank must stay trainable.


def dead_sites(seed: int):
    """Sites whose weighted update has numerical rank below the asked rank, of four kinds:
    B_k in a shared integer column basis (float32-exact, so the rank is exact too), all-zero
    updates, two updates that cancel exactly, or a rank above Σ r_k. Returns the
    exact_factors arguments and the asked rank."""
    g = gen(seed)
    kind = seed % 4
    out_dim, in_dim = randint(g, 1, 10), randint(g, 1, 10)
    ranks = [randint(g, 1, 4) for _ in range(randint(g, 1, 3))]
    as_ = [randn(g, r, in_dim) for r in ranks]
    weights = (torch.rand(len(ranks), generator=g, dtype=torch.float64) + 0.1).tolist()
    scalings = (torch.rand(len(ranks), generator=g, dtype=torch.float64) * 3 + 0.1).tolist()
    if kind == 0:
        true_rank = randint(g, 1, 2)
        basis = torch.randint(-3, 4, (out_dim, true_rank), generator=g).float()
        bs = [basis @ torch.randint(-3, 4, (true_rank, r), generator=g).float() for r in ranks]
    elif kind == 1:
        bs = [torch.zeros(out_dim, r) for r in ranks]
    elif kind == 2:
        b = randn(g, out_dim, ranks[0])
        bs, as_ = [b, -b], [as_[0], as_[0].clone()]
        weights, scalings = [1.0, 1.0], [scalings[0]] * 2
    else:
        bs = [randn(g, out_dim, r) for r in ranks]
    rank = randint(g, 2, 12) if kind != 3 else sum(ranks) + randint(g, 1, 4)  # ≥ rank(ΔW)
    return bs, as_, weights, scalings, rank


def _cosines(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = x.to(torch.float64), y.to(torch.float64)
    return (x / x.norm(dim=1, keepdim=True)) @ (y / y.norm(dim=1, keepdim=True)).T


def test_filling_dead_directions_keeps_the_product_and_revives_every_row():
    with_dead = orthogonal_checked = 0
    for seed in range(120):
        bs, as_, weights, scalings, rank = dead_sites(seed)
        ts = 0.5 + seed % 3
        f = exact_factors(bs, as_, weights, scalings, target_rank=rank, target_scaling=ts)
        old = exact_factors(
            bs, as_, weights, scalings, target_rank=rank, target_scaling=ts, fill_dead=False
        )
        target = delta(bs, as_, weights, scalings)
        # (a) the product is that of the unfilled factors, i.e. the exact aggregate here
        assert close(dense(f.b, f.a, ts), dense(old.b, old.a, ts)), seed
        assert close(dense(f.b, f.a, ts), target), seed
        # (b) no A row is zero any more
        assert (f.a.norm(dim=1) > 0).all(), seed
        # The live directions lead and are untouched; the dead ones, exactly as many as
        # ΔW's rank is short of `rank`, have B columns of exact zeros.
        dead = (f.b == 0).all(dim=0)
        live = int((~dead).sum())
        assert live == min(rank, int(torch.linalg.matrix_rank(target))), seed
        assert not dead[:live].any() and dead[live:].all()
        assert torch.equal(f.b[:, :live], old.b[:, :live])
        assert torch.equal(f.a[:live], old.a[:live])
        if live == rank:
            continue
        with_dead += 1
        filled = f.a[live:].to(torch.float64)
        assert torch.allclose(
            filled.norm(dim=1), torch.full((rank - live,), FILL_ROW_NORM).double()
        )
        if rank <= as_[0].shape[1]:  # (c) room for orthogonal directions: all are
            assert (_cosines(filled, f.a[:live]).abs() < 1e-6).all(), seed
            gram = _cosines(filled, filled)
            assert torch.allclose(gram, torch.eye(rank - live, dtype=torch.float64), atol=1e-6)
            orthogonal_checked += 1
    assert with_dead > 80 and orthogonal_checked > 15


def test_a_small_but_real_direction_is_not_dead():
    b = torch.tensor([[1.0, 0.0], [0.0, 1e-9], [0.0, 0.0]], dtype=torch.float64)
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    f = exact_factors([b], [a], [1.0], [1.0], target_rank=3)
    assert (f.b[:, :2] != 0).any(dim=0).all() and (f.b[:, 2] == 0).all()
    assert close(dense(f.b, f.a), dense(b, a), rtol=1e-15)
    assert torch.allclose(f.a[2].abs(), torch.tensor([0.0, 0.0, FILL_ROW_NORM]).double())


def test_fill_is_deterministic_and_seeded():
    g = gen(3)
    bs, as_ = [torch.zeros(6, 2), randn(g, 6, 2)], [randn(g, 2, 8), randn(g, 2, 8)]
    kwargs = {"target_rank": 5}
    one = exact_factors(bs, as_, [1, 1], [1.0, 1.0], **kwargs)
    again = exact_factors([b.clone() for b in bs], as_, [1, 1], [1.0, 1.0], **kwargs)
    other = exact_factors(bs, as_, [1, 1], [1.0, 1.0], seed=1, **kwargs)
    assert torch.equal(one.a, again.a) and torch.equal(one.b, again.b)
    assert torch.equal(one.a[:2], other.a[:2]) and not torch.equal(one.a[2:], other.a[2:])
    assert torch.equal(one.b, other.b)


def test_exact_aggregate_fills_each_module_differently():
    """Round one of a run whose sites all still have B = 0 (PEFT's init): every direction
    is dead. The fresh A rows must differ between modules of one shape, like PEFT's own
    per-layer init, and must not depend on anything but the seed and the module."""
    modules = {"q_proj": (5, 6), "o_proj": (5, 6)}
    states = [adapter(gen(k), 2, modules, head=False) for k in range(3)]
    for s in states:
        for key in s:
            if ".lora_B." in key:
                s[key].zero_()
    kw = {"scalings": [1.0] * 3, "target_rank": 4, "target_scaling": 1.0}
    out = exact_aggregate(states, [1, 2, 3], **kw)
    q, o = (out[f"{PREFIX}.{m}.lora_A.weight"] for m in modules)
    assert (q.norm(dim=1) > 0).all() and not torch.allclose(q, o)
    assert all(torch.equal(v, torch.zeros_like(v)) for k, v in out.items() if ".lora_B." in k)
    assert torch.equal(
        exact_aggregate(states[::-1], [3, 2, 1], **kw)[f"{PREFIX}.q_proj.lora_A.weight"], q
    )
    off = exact_aggregate(states, [1, 2, 3], fill_dead=False, **kw)
    assert all(torch.equal(v, torch.zeros_like(v)) for v in off.values())


def _lora_grads(f, weight: torch.Tensor, scaling: float, x: torch.Tensor, g_out: torch.Tensor):
    """Gradients of A and B for y = x Wᵀ + s·x Aᵀ Bᵀ (PEFT's nn.Linear LoRA, no dropout)
    under the loss Σ y ⊙ g_out."""
    a = f.a.detach().clone().requires_grad_()
    b = f.b.detach().clone().requires_grad_()
    y = x @ weight.T + scaling * (x @ a.T) @ b.T
    (y * g_out).sum().backward()
    return a.grad, b.grad


def test_every_direction_gets_a_gradient_after_aggregation():
    """(d) The point of filling: with it B gets a gradient in every column (and, after one
    step, A in every row); without it the dead pairs get exactly zero gradient, and stay
    zero however long one trains."""
    g = gen(11)
    out_dim, in_dim, scaling, rank = 7, 9, 2.0, 6
    basis = torch.randint(-3, 4, (out_dim, 1), generator=g).float()
    cases = {
        "zero updates": ([torch.zeros(out_dim, 4)] * 2, [randn(g, 4, in_dim)] * 2),
        "rank-1 updates": (
            [basis @ torch.randint(-3, 4, (1, 4), generator=g).float() for _ in range(2)],
            [randn(g, 4, in_dim) for _ in range(2)],
        ),
    }
    weight, x, g_out = randn(g, out_dim, in_dim), randn(g, 16, in_dim), randn(g, 16, out_dim)
    for name, (bs, as_) in cases.items():
        args = (bs, as_, [1.0, 3.0], [scaling, scaling])
        kw = {"target_rank": rank, "target_scaling": scaling}
        filled = exact_factors(*args, **kw)
        a_grad, b_grad = _lora_grads(filled, weight, scaling, x, g_out)
        b_cols = b_grad.norm(dim=0)  # every column gets a real gradient, not round-off
        assert (b_cols > 1e-3 * b_cols.max()).all(), name
        stepped = filled._replace(b=filled.b - 0.1 * b_grad)
        a_rows = _lora_grads(stepped, weight, scaling, x, g_out)[0].norm(dim=1)
        assert (a_rows > 1e-3 * a_rows.max()).all(), name

        dead = exact_factors(*args, fill_dead=False, **kw)
        # What the fix is for: without it some pairs are zero, or round-off noise ~1e-20
        # where ΔW has rank 1 in exact arithmetic ...
        norms = dead.a.norm(dim=1)
        zero_rows = norms <= 1e-12 * max(float(norms.max()), 1.0)
        assert zero_rows.any(), name
        a, b = dead.a, dead.b
        for _ in range(3):  # ... get no gradient to speak of, so SGD never moves them
            a_grad, b_grad = _lora_grads(dead._replace(a=a, b=b), weight, scaling, x, g_out)
            assert (b_grad[:, zero_rows].norm(dim=0) <= 1e-12 * b_grad.norm()).all(), name
            assert (a_grad[zero_rows].norm(dim=1) <= 1e-12 * max(a_grad.norm(), 1)).all()
            a, b = a - 0.1 * a_grad, b - 0.1 * b_grad
        assert (a[zero_rows].norm(dim=1) <= 1e-12).all()
