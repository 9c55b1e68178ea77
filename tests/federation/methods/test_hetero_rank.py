import math

import pytest
import torch

from fedmedlora.federation.methods.hetero_rank import hetero_aggregate, redistribute, site_rank
from fedmedlora.federation.methods.lora_pairs import lora_ranks, lora_scaling

from .helpers import PREFIX, adapter, best_rank, close, dense, gen, randint, randn

MODULES = {"q_proj": (10, 8), "v_proj": (6, 8)}
ALPHA = 16.0


def _low_rank_sites(g: torch.Generator, ranks: list[int], true_rank: int):
    """Sites whose B factors share one `true_rank`-dimensional column space per module, so
    that every weighted sum of their products has rank ≤ true_rank."""
    sites = [adapter(g, r, MODULES) for r in ranks]
    for name, (out_dim, _) in MODULES.items():
        basis = randn(g, out_dim, true_rank)
        for site, r in zip(sites, ranks, strict=True):
            site[f"{PREFIX}.{name}.lora_B.weight"] = basis @ randn(g, true_rank, r)
    return sites


def _delta(sites, weights, scalings, name):
    a_key, b_key = f"{PREFIX}.{name}.lora_A.weight", f"{PREFIX}.{name}.lora_B.weight"
    p = [w / sum(weights) for w in weights]
    return sum(
        pk * dense(s[b_key], s[a_key], sk) for pk, s, sk in zip(p, sites, scalings, strict=True)
    )


def test_round_trip_through_the_global_adapter():
    exact_checked = approx_checked = 0
    for seed in range(25):
        g = gen(seed)
        ranks = [randint(g, 1, 6) for _ in range(randint(g, 2, 4))]
        true_rank = randint(g, 1, 4)
        sites = _low_rank_sites(g, ranks, true_rank)
        weights = (torch.rand(len(ranks), generator=g) + 0.1).tolist()
        scalings = [lora_scaling(ALPHA, r) for r in ranks]
        glob = hetero_aggregate(sites, weights, alpha=ALPHA)
        top = max(ranks)
        assert lora_ranks(glob) == dict.fromkeys((f"{PREFIX}.{m}" for m in MODULES), top)
        g_scaling = lora_scaling(ALPHA, top)
        for site, r in zip(sites, ranks, strict=True):
            local = redistribute(glob, r, lora_scaling(ALPHA, r), global_scaling=g_scaling)
            assert list(local) == list(site)
            assert all(local[k].shape == site[k].shape for k in site)  # the site's own shapes
            for name in MODULES:
                a_key, b_key = f"{PREFIX}.{name}.lora_A.weight", f"{PREFIX}.{name}.lora_B.weight"
                product = dense(local[b_key], local[a_key], lora_scaling(ALPHA, r))
                target = _delta(sites, weights, scalings, name)
                if true_rank <= r:  # the whole federation's update fits: preserved exactly
                    assert close(product, target), seed
                    exact_checked += 1
                else:  # otherwise the site gets the best approximation of its rank
                    sing = torch.linalg.svdvals(target)
                    err = float((product - target).norm())
                    assert math.isclose(err, float(sing[r:].norm()), rel_tol=1e-4, abs_tol=1e-4)
                    approx_checked += 1
    assert exact_checked > 20 and approx_checked > 5


def test_global_is_the_best_approximation_at_max_rank():
    g = gen(7)
    ranks = [2, 5, 3]
    sites = [adapter(g, r, MODULES) for r in ranks]  # summed update has rank 8 > 5
    glob = hetero_aggregate(sites, [1, 1, 1], alpha=ALPHA, rslora=True)
    scalings = [lora_scaling(ALPHA, r, rslora=True) for r in ranks]
    a_key, b_key = f"{PREFIX}.q_proj.lora_A.weight", f"{PREFIX}.q_proj.lora_B.weight"
    product = dense(glob[b_key], glob[a_key], lora_scaling(ALPHA, 5, rslora=True))
    target = _delta(sites, [1, 1, 1], scalings, "q_proj")
    assert close(product, best_rank(target, 5), rtol=1e-4)
    assert not close(product, target, rtol=1e-3)


def test_explicit_scalings_and_global_rank():
    g = gen(8)
    sites = _low_rank_sites(g, [2, 3], true_rank=2)
    glob = hetero_aggregate(sites, [1, 3], scalings=[0.5, 2.0], global_rank=7, global_scaling=0.25)
    assert site_rank(glob) == 7
    for name in MODULES:
        a_key, b_key = f"{PREFIX}.{name}.lora_A.weight", f"{PREFIX}.{name}.lora_B.weight"
        target = _delta(sites, [1, 3], [0.5, 2.0], name)
        assert close(dense(glob[b_key], glob[a_key], 0.25), target)


def test_redistribute_copies_heads_and_rescales_lora_bias():
    g = gen(9)
    glob = adapter(g, 4, MODULES)
    bias_key = f"{PREFIX}.q_proj.lora_B.bias"
    glob[bias_key] = randn(g, 10)
    local = redistribute(glob, 2, 3.0, global_scaling=1.5)
    assert torch.equal(
        local["base_model.model.score.weight"], glob["base_model.model.score.weight"]
    )
    assert local["base_model.model.score.weight"] is not glob["base_model.model.score.weight"]
    assert torch.allclose(local[bias_key] * 3.0, glob[bias_key] * 1.5)


def test_argument_errors():
    g = gen(10)
    sites = [adapter(g, 2, MODULES), adapter(g, 3, MODULES)]
    with pytest.raises(ValueError, match="exactly one"):
        hetero_aggregate(sites, [1, 1])
    with pytest.raises(ValueError, match="exactly one"):
        hetero_aggregate(sites, [1, 1], alpha=8, scalings=[1, 1])
    with pytest.raises(ValueError, match="global_scaling"):
        hetero_aggregate(sites, [1, 1], scalings=[1, 1])
    mixed = {**sites[0], f"{PREFIX}.v_proj.lora_A.weight": torch.zeros(3, 8)}
    mixed[f"{PREFIX}.v_proj.lora_B.weight"] = torch.zeros(6, 3)
    with pytest.raises(ValueError, match="one LoRA rank"):
        site_rank(mixed)
    with pytest.raises(ValueError, match="one LoRA rank"):
        site_rank({"base_model.model.score.weight": torch.zeros(1)})


def test_redistribute_to_a_larger_rank_leaves_no_dead_direction():
    g = gen(12)
    glob = adapter(g, 2, MODULES)
    local = redistribute(glob, 5, 0.5, global_scaling=2.0)
    unfilled = redistribute(glob, 5, 0.5, global_scaling=2.0, fill_dead=False)
    for name in MODULES:
        a_key, b_key = f"{PREFIX}.{name}.lora_A.weight", f"{PREFIX}.{name}.lora_B.weight"
        a, b = local[a_key], local[b_key]
        assert close(dense(b, a, 0.5), dense(glob[b_key], glob[a_key], 2.0))
        assert (a.norm(dim=1) > 0).all() and torch.equal(b[:, 2:], torch.zeros(b.shape[0], 3))
        assert (a[2:] @ a[:2].T).abs().max() < 1e-6  # ⟂ the live directions (in = 8 ≥ 5)
        assert torch.equal(unfilled[a_key][2:], torch.zeros(3, 8))
        assert torch.equal(unfilled[a_key][:2], a[:2])
    assert not torch.equal(
        local[f"{PREFIX}.q_proj.lora_A.weight"][2:], local[f"{PREFIX}.v_proj.lora_A.weight"][2:]
    )
    assert torch.equal(redistribute(glob, 5, 0.5, global_scaling=2.0)[a_key], local[a_key])
    reseeded = redistribute(glob, 5, 0.5, global_scaling=2.0, seed=7)
    assert not torch.equal(reseeded[a_key], local[a_key])


def test_hetero_aggregate_of_untrained_sites_is_trainable():
    """Sites straight from PEFT's init (B = 0) give ΔW = 0: the global adapter keeps a zero
    product but every A row must be usable, else nothing would ever train."""
    g = gen(13)
    sites = [adapter(g, r, MODULES, head=False) for r in (2, 4)]
    for site in sites:
        for key in site:
            if ".lora_B." in key:
                site[key].zero_()
    glob = hetero_aggregate(sites, [1, 1], alpha=ALPHA)
    off = hetero_aggregate(sites, [1, 1], alpha=ALPHA, fill_dead=False)
    for key, value in glob.items():
        if ".lora_B." in key:
            assert torch.equal(value, torch.zeros(value.shape[0], 4))
        else:
            assert value.shape[0] == 4 and (value.norm(dim=1) > 0).all()
            assert torch.equal(off[key], torch.zeros_like(off[key]))
