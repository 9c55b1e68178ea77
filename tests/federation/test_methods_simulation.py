"""Every aggregation method through the real Flower path (2 sites x 2 rounds, tiny
model): what travels, and that the saved adapter is exactly what the method computes
from the replies the server received."""

from __future__ import annotations

import pytest
import torch

from fedmedlora.data.formats.jsonl import write_jsonl
from fedmedlora.federation.aggregation import weighted_average
from fedmedlora.federation.methods import server_opt
from fedmedlora.federation.methods.fedmedlora_plus import plus_weights
from fedmedlora.federation.methods.lora_pairs import split_lora
from fedmedlora.recipe.protocols import load_peft_adapter
from fedmedlora.recipe.site_recipe import initial_adapter
from tests.federation.tiny_federation import TinyRun, run_tiny
from tests.fixtures import notes

# Each test runs a Flower simulation (Ray, several processes): about 30 s each.
pytestmark = pytest.mark.slow


def _replies(run: TinyRun, server_round: int) -> list:
    """The training replies of one round (both sites reply every round, in order)."""
    replies = run.grid.train_replies()
    assert len(replies) == 2 * len(run.grid.train_messages()) // 2
    return replies[2 * (server_round - 1) : 2 * server_round]


def _round(msg) -> int:
    return int(msg.content["config"]["server-round"])


def _states(messages) -> list[dict[str, torch.Tensor]]:
    return [dict(m.content["arrays"].to_torch_state_dict()) for m in messages]


def _counts(messages) -> list[float]:
    return [float(m.content["metrics"]["num-examples"]) for m in messages]


def _close(a: dict, b: dict, atol=1e-5) -> None:
    assert set(a) == set(b)
    for key in a:
        assert torch.allclose(a[key].double(), b[key].double(), atol=atol), key


@pytest.fixture(scope="module")
def ffa(tmp_path_factory):
    return run_tiny(tmp_path_factory.mktemp("ffa"), "{rounds: 2, aggregation: {method: ffa}}")


def test_ffa_sends_only_b_both_ways_and_keeps_the_shared_a(ffa):
    assert ffa.results["run"]["status"] == "completed"
    for msg in ffa.grid.train_messages() + ffa.grid.train_replies():
        keys = list(msg.content["arrays"].keys())
        assert keys and all(".lora_B." in k for k in keys), keys[:3]
    comm = ffa.results["communication"]
    # half the adapter travels (B is half of every pair at equal in/out sizes)
    assert comm["adapter_bytes_per_round"] < 0.75 * 2 * 2 * comm["adapter_bytes"]
    saved = load_peft_adapter(ffa.out / "adapter")
    initial = initial_adapter(ffa.config.recipe())
    for a_key in split_lora(initial).a_keys:
        assert torch.equal(saved[a_key], initial[a_key])
    last = _replies(ffa, 2)
    expected_b = weighted_average(_states(last), _counts(last))
    _close({k: saved[k] for k in expected_b}, expected_b)


@pytest.fixture(scope="module")
def plus_sites(tmp_path_factory):
    return run_tiny(
        tmp_path_factory.mktemp("plus"),
        "{rounds: 2, aggregation: {method: fedmedlora+, temperature: 0.05}}",
    )


def test_fedmedlora_plus_weights_sites_by_their_own_validation_loss(plus_sites):
    run = plus_sites
    assert run.config.train.validation_fraction == 0.1  # filled in for this method
    for entry in run.results["rounds"][1:]:
        metrics = entry["train"]
        weights = {s: m["aggregation-weight"] for s, m in metrics.items()}
        losses = {s: m["val-loss"] for s, m in metrics.items()}
        assert sum(weights.values()) == pytest.approx(1.0)
        assert max(weights, key=weights.get) == min(losses, key=losses.get)
    last = _replies(run, 2)
    losses = [float(m.content["metrics"]["val-loss"]) for m in last]
    expected = weighted_average(_states(last), plus_weights(losses, _counts(last), 0.05))
    _close(load_peft_adapter(run.out / "adapter"), expected)
    assert "Site contributions (fedmedlora+)" in (run.out / "report.md").read_text()


def test_fedmedlora_plus_with_server_data_scores_every_adapter_itself(tmp_path):
    write_jsonl(notes(4, "held", offset=40), tmp_path / "server.jsonl")
    run = run_tiny(
        tmp_path,
        "{rounds: 1, evaluate_every: 0, evaluate_zero_shot: false, aggregation: "
        "{method: fedmedlora+, validation: server, server_validation: "
        "{name: held, train: server.jsonl}}}",
    )
    assert run.config.train.validation_fraction == 0  # sites hold nothing out
    metrics = next(r for r in run.results["rounds"] if r["round"] == 1)["train"]
    assert all("val-loss" not in m and m["server-val-loss"] > 0 for m in metrics.values())
    weights = [m["aggregation-weight"] for m in metrics.values()]
    losses = [m["server-val-loss"] for m in metrics.values()]
    assert sum(weights) == pytest.approx(1.0)
    assert weights == pytest.approx(plus_weights(losses, [1, 1], 0.5))


def test_exact_aggregation_across_site_ranks_keeps_the_best_rank_r_average(tmp_path):
    run = run_tiny(
        tmp_path,
        "{rounds: 1, evaluate_every: 0, evaluate_zero_shot: false, aggregation: {method: exact}}",
        north=", lora_rank: 4",
    )
    lora = run.config.lora
    saved = load_peft_adapter(run.out / "adapter")
    replies = _replies(run, 1)
    ranks = {}
    for msg in replies:
        site = msg.content["site"]["site"]
        a_keys = [k for k in msg.content["arrays"] if k.endswith("lora_A.weight")]
        ranks[site] = {msg.content["arrays"][k].shape[0] for k in a_keys}
    assert ranks == {"north": {4}, "south": {lora.rank}}  # each site trains its own rank
    states, counts = _states(replies), _counts(replies)
    p = [c / sum(counts) for c in counts]
    scalings = [lora.alpha / next(iter(ranks[m.content["site"]["site"]])) for m in replies]
    s_global = lora.alpha / lora.rank
    for a_key, b_key in split_lora(saved).pairs.values():
        assert saved[a_key].shape[0] == lora.rank
        dense = sum(
            pk * sk * st[b_key].double() @ st[a_key].double()
            for pk, sk, st in zip(p, scalings, states, strict=True)
        )
        u, sv, vh = torch.linalg.svd(dense)
        best = (u[:, : lora.rank] * sv[: lora.rank]) @ vh[: lora.rank]
        got = s_global * saved[b_key].double() @ saved[a_key].double()
        assert torch.allclose(got, best, atol=1e-5), a_key


def test_fedadam_takes_server_steps_along_the_averaged_delta(tmp_path):
    run = run_tiny(
        tmp_path,
        "{rounds: 2, evaluate_every: 0, evaluate_zero_shot: false, "
        "aggregation: {method: fedadam, server_lr: 0.05}}",
    )
    settings = server_opt.ServerOptSettings(method="fedadam", lr=0.05, momentum=0.9)
    opt: dict = {}
    sent = {r: _states([m for m in run.grid.train_messages() if _round(m) == r])[0] for r in (1, 2)}
    g1, opt = server_opt.step(
        sent[1],
        weighted_average(_states(_replies(run, 1)), _counts(_replies(run, 1))),
        opt,
        settings,
    )
    _close(sent[2], g1)  # round 2 starts from the server's step, not the plain average
    plain = weighted_average(_states(_replies(run, 1)), _counts(_replies(run, 1)))
    assert any(not torch.allclose(g1[k], plain[k]) for k in g1)
    g2, _ = server_opt.step(
        sent[2],
        weighted_average(_states(_replies(run, 2)), _counts(_replies(run, 2))),
        opt,
        settings,
    )
    _close(load_peft_adapter(run.out / "adapter"), g2)


def test_fedsa_shares_a_and_keeps_each_sites_b_at_the_site(tmp_path):
    keep = tmp_path / "north_keeps"
    run = run_tiny(
        tmp_path,
        "{rounds: 2, evaluate_zero_shot: false, aggregation: {method: fedsa}}",
        north=f", keep_dir: '{keep}'",
    )
    for msg in run.grid.train_messages() + run.grid.train_replies():
        keys = list(msg.content["arrays"].keys())
        assert keys and not any(".lora_B." in k for k in keys), keys[:3]
    for entry in run.results["rounds"]:
        # each site's B kept training across rounds in its own node state
        assert {m["personal-rounds"] for m in entry["train"].values()} == {entry["round"]}
    from safetensors.torch import load_file

    shared = load_file(run.out / "shared_adapter.safetensors")
    last = _replies(run, 2)
    _close(shared, weighted_average(_states(last), _counts(last)))
    assert not (run.out / "adapter").exists()  # no global adapter: B never left the sites
    personal = load_peft_adapter(keep / "personal_adapter")
    for key, value in shared.items():
        assert torch.equal(personal[key], value)  # the final global A ...
    b_keys = [k for k in personal if ".lora_B." in k]
    assert b_keys and any(personal[k].abs().sum() > 0 for k in b_keys)  # ... with its own B


def test_differential_privacy_reports_the_budget_spent_per_round(tmp_path):
    run = run_tiny(
        tmp_path,
        "{rounds: 2, evaluate_every: 0, evaluate_zero_shot: false, "
        "privacy: {noise_multiplier: 1.1, clip_norm: 0.5}}",
    )
    spent = run.results["privacy"]
    assert set(spent) == {"1", "2"}
    assert 0 < spent["1"]["epsilon"] < spent["2"]["epsilon"]
    assert spent["1"]["noise_std"] == pytest.approx(1.1 * 0.5 / 2)
    weights = [m["aggregation-weight"] for m in run.results["rounds"][0]["train"].values()]
    assert weights == pytest.approx([0.5, 0.5])  # equal weights under DP
    assert "Differential privacy" in (run.out / "report.md").read_text()
