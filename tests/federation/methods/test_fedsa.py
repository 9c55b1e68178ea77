import pytest
import torch

from fedmedlora.federation.aggregation import weighted_average
from fedmedlora.federation.methods.fedsa import aggregate_shared, merge_personal, shared_part
from fedmedlora.federation.methods.lora_pairs import is_lora_b, split_lora

from .helpers import adapter, gen


def test_shared_part_is_a_and_non_lora_tensors():
    site = adapter(gen(0), 3)
    shared = shared_part(site)
    split = split_lora(site)
    assert set(shared) == set(split.a_keys) | set(split.others)
    assert not any(is_lora_b(k) for k in shared)
    assert all(shared[k] is site[k] for k in shared)


def test_a_round_shares_a_and_keeps_each_sites_b():
    g = gen(1)
    sites = [adapter(g, 3) for _ in range(3)]
    weights = [1.0, 2.0, 5.0]
    glob = aggregate_shared([shared_part(s) for s in sites], weights)
    expected = weighted_average(sites, weights)
    for site in sites:
        nxt = merge_personal(glob, site)
        assert list(nxt) == list(site)
        for k, v in nxt.items():
            if is_lora_b(k):
                assert torch.equal(v, site[k])  # personal: untouched
            else:
                assert torch.equal(v, expected[k])  # shared: the average
                assert not torch.equal(v, site[k])


def test_refuses_mismatched_or_personal_tensors():
    g = gen(2)
    site, other = adapter(g, 3), adapter(g, 3)
    with pytest.raises(ValueError, match="FedSA keeps B local"):
        aggregate_shared([shared_part(site), other], [1, 1])
    with pytest.raises(ValueError, match="does not match"):
        merge_personal(other, site)  # a full state: its B keys are not part of the shared part
    shared = shared_part(other)
    del shared["base_model.model.score.bias"]
    with pytest.raises(ValueError, match="does not match"):
        merge_personal(shared, site)
    smaller = shared_part(adapter(g, 2))
    with pytest.raises(ValueError, match="other shapes"):
        merge_personal(smaller, site)
