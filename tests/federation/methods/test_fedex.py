"""FedEx-LoRA: the factor averages plus a residual on the frozen weight give exactly the
weighted average of the sites' models, round after round; what travels; and the method
end to end through Flower (the residual reaches each site's frozen weight)."""

from __future__ import annotations

import pytest
import torch

from fedmedlora.config import aggregation_settings
from fedmedlora.federation.aggregation import weighted_average
from fedmedlora.federation.aggregator import Aggregator, SiteUpdate
from fedmedlora.federation.methods.fedex import RESIDUAL_SUFFIX, residual_keys
from fedmedlora.federation.methods.lora_pairs import split_lora
from fedmedlora.federation.methods.screening import NotEnoughSites
from fedmedlora.model.lora import BASE_RESIDUAL, LoraSettings

from .helpers import adapter, gen, randn

LORA = LoraSettings(rank=4, alpha=8)
SCALING = LORA.alpha / LORA.rank


def _aggregator(initial: dict) -> Aggregator:
    return Aggregator(aggregation_settings(method="fedex"), LORA, initial, max_site_weight=1.0)


def _model(state: dict, residual: dict) -> dict[str, torch.Tensor]:
    """Each module's effective weight change: residual + s·B·A (float64)."""
    return {
        key: residual[key].double() + SCALING * state[b].double() @ state[a].double()
        for key, (a, b) in residual_keys(state).items()
    }


def _sites(g, current: dict, n: int) -> list[dict]:
    return [{k: v + 0.3 * randn(g, *v.shape) for k, v in current.items()} for _ in range(n)]


def test_each_round_is_exactly_the_weighted_average_of_the_sites_models():
    g = gen(0)
    initial = adapter(g, LORA.rank)
    agg = _aggregator(initial)
    sent = agg.downlink(initial)
    counts = [10.0, 30.0, 20.0]
    p = [c / sum(counts) for c in counts]
    for rnd in (1, 2, 3):
        residual = {k: v for k, v in sent.items() if k.endswith(RESIDUAL_SUFFIX)}
        states = _sites(g, agg.uplink(sent), len(counts))
        updates = [
            SiteUpdate(f"s{i}", s, c) for i, (s, c) in enumerate(zip(states, counts, strict=True))
        ]
        sent = agg.aggregate(rnd, sent, updates)
        new_residual = {k: v for k, v in sent.items() if k.endswith(RESIDUAL_SUFFIX)}
        got = _model(agg.full(sent), new_residual)
        expected = {
            k: sum(pk * _model(s, residual)[k] for pk, s in zip(p, states, strict=True))
            for k in got
        }
        for key in got:
            assert torch.allclose(got[key], expected[key], atol=1e-5), (rnd, key)
        factors = weighted_average(states, p)
        for key in factors:  # A, B and the head: the plain weighted average
            assert torch.allclose(sent[key], factors[key], atol=1e-6), key
        assert any(float(v.abs().max()) > 1e-3 for v in new_residual.values())


def test_fed_medlora_without_the_residual_is_not_exact():
    """The residual is what makes it exact: the factor average alone misses it."""
    g = gen(1)
    initial = adapter(g, LORA.rank, head=False)
    agg = _aggregator(initial)
    sent = agg.downlink(initial)
    states = _sites(g, agg.uplink(sent), 2)
    sent = agg.aggregate(1, sent, [SiteUpdate("a", states[0], 1), SiteUpdate("b", states[1], 1)])
    residual = {k: v for k, v in sent.items() if k.endswith(RESIDUAL_SUFFIX)}
    zero = {k: torch.zeros_like(v) for k, v in residual.items()}
    exact = _model(agg.full(sent), residual)
    plain = _model(agg.full(sent), zero)
    assert not all(torch.allclose(exact[k], plain[k], atol=1e-3) for k in exact)


def test_what_travels_down_and_up():
    g = gen(2)
    initial = adapter(g, LORA.rank)
    agg = _aggregator(initial)
    sent = agg.downlink(initial)
    pairs = split_lora(initial).pairs
    residuals = {k: v for k, v in sent.items() if k.endswith(RESIDUAL_SUFFIX)}
    assert set(residuals) == {prefix + ".base_layer.weight" for prefix in pairs}
    for prefix, (a, b) in pairs.items():
        r = residuals[prefix + ".base_layer.weight"]
        assert r.shape == (initial[b].shape[0], initial[a].shape[1]) and not r.any()
    assert agg.uplink(sent) == initial == agg.full(sent)  # sites send back the adapter only
    bad = {**initial, next(iter(residuals)): torch.zeros(1)}  # a reply with a residual
    with pytest.raises(NotEnoughSites, match=r"unexpected .*base_layer\.weight"):
        agg.aggregate(1, sent, [SiteUpdate("a", bad, 1)])


def test_embedding_adapters_are_refused():
    state = {
        "m.embed.lora_embedding_A": torch.zeros(2, 9),
        "m.embed.lora_embedding_B": torch.zeros(4, 2),
    }
    with pytest.raises(ValueError, match="linear LoRA modules only"):
        residual_keys(state)


@pytest.mark.slow
def test_a_flower_run_sends_the_residual_and_saves_it_in_the_adapter_folder(tmp_path):
    """2 sites x 2 rounds on the tiny model (about 40 s): the residual goes down with the
    adapter, sites send back A and B only, and the saved adapter with its residual is
    exactly the weighted average of the last round's site models."""
    from safetensors.torch import load_file

    from tests.federation.tiny_federation import run_tiny

    run = run_tiny(tmp_path, "{rounds: 2, aggregation: {method: fedex}}")
    assert run.results["run"]["status"] == "completed"
    down = [dict(m.content["arrays"].to_torch_state_dict()) for m in run.grid.train_messages()]
    up = run.grid.train_replies()
    assert all(any(k.endswith(RESIDUAL_SUFFIX) for k in d) for d in down)
    for msg in up:
        assert not any(k.endswith(RESIDUAL_SUFFIX) for k in msg.content["arrays"])
    saved = load_file(str(run.out / "adapter" / "adapter_model.safetensors"))  # its tensors
    final_residual = load_file(str(run.out / "adapter" / BASE_RESIDUAL))
    last, residual = up[2:4], down[2]  # round 2's replies and what went down with it
    states = [dict(m.content["arrays"].to_torch_state_dict()) for m in last]
    counts = [float(m.content["metrics"]["num-examples"]) for m in last]
    p = [c / sum(counts) for c in counts]
    scaling = run.config.lora.alpha / run.config.lora.rank
    for key, (a, b) in residual_keys(saved).items():
        got = final_residual[key].double() + scaling * saved[b].double() @ saved[a].double()
        want = sum(
            pk * (residual[key].double() + scaling * s[b].double() @ s[a].double())
            for pk, s in zip(p, states, strict=True)
        )
        assert torch.allclose(got, want, atol=1e-5), key
