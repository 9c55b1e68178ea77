import math

import pytest
import torch

from fedmedlora.federation.methods.screening import (
    NotEnoughSites,
    Screened,
    require_sites,
    screen_updates,
)

from .helpers import PREFIX, adapter, gen

Q_A, Q_B = f"{PREFIX}.q_proj.lora_A.weight", f"{PREFIX}.q_proj.lora_B.weight"
HEAD = "base_model.model.score.weight"


def _moved(global_state, g: torch.Generator, scale: float = 0.1) -> dict[str, torch.Tensor]:
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in global_state.items()}


def _sites(n: int, seed: int = 0, rank: int = 4):
    """A global adapter and n small, ordinary updates of it, named site0.."""
    g = gen(seed)
    x = adapter(g, rank)
    return x, [(f"site{i}", _moved(x, g)) for i in range(n)]


def _scaled(x, direction, scale: float) -> dict[str, torch.Tensor]:
    return {k: x[k] + scale * direction[k] for k in x}


def _unit(x, seed: int) -> dict[str, torch.Tensor]:
    """A random direction of norm 1 over the whole adapter."""
    g = gen(seed)
    d = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in x.items()}
    n = math.sqrt(sum(float(t.square().sum()) for t in d.values()))
    return {k: (t / n) for k, t in d.items()}


def test_ordinary_updates_are_all_accepted_with_their_norms():
    x, ups = _sites(5)
    s = screen_updates(x, ups)
    assert s.accepted == [0, 1, 2, 3, 4] and s.rejected == {}
    assert s.names == [f"site{i}" for i in range(5)]
    for (_, state), norm in zip(ups, s.norms, strict=True):
        flat = torch.cat([(state[k].double() - x[k].double()).reshape(-1) for k in x])
        assert norm == pytest.approx(float(flat.norm()), rel=1e-12)
        assert norm > 0


@pytest.mark.parametrize(
    ("bad", "words"),
    [(math.nan, ["NaN"]), (math.inf, ["Inf"]), (-math.inf, ["Inf"])],
)
def test_non_finite_values_are_rejected_naming_the_key(bad, words):
    x, ups = _sites(4)
    ups[2][1][Q_B][1, 0] = bad
    s = screen_updates(x, ups)
    assert s.accepted == [0, 1, 3]
    reason = s.rejected[2]
    assert Q_B in reason and all(w in reason for w in words)
    if math.isinf(bad):
        assert "NaN" not in reason
    assert math.isnan(s.norms[2])


def test_nan_and_inf_in_several_keys_are_summed_up_in_one_line():
    x, ups = _sites(4)
    ups[0][1][Q_A][0, 0] = math.nan
    ups[0][1][Q_A][0, 1] = math.inf
    ups[0][1][HEAD][0, 0] = math.nan
    reason = screen_updates(x, ups).rejected[0]
    assert reason.startswith(f"NaN and Inf in {Q_A}")
    assert "(and 1 more keys)" in reason and "\n" not in reason


def test_inf_alone_is_not_called_nan():
    x, ups = _sites(3)
    ups[1][1][HEAD][0, 0] = math.inf
    reason = screen_updates(x, ups).rejected[1]
    assert reason == f"Inf in {HEAD}"


def test_missing_and_unexpected_keys_are_named():
    x, ups = _sites(4)
    del ups[1][1][Q_A]
    ups[3][1]["base_model.model.extra.weight"] = torch.zeros(2)
    s = screen_updates(x, ups)
    assert s.accepted == [0, 2]
    assert "missing" in s.rejected[1] and Q_A in s.rejected[1]
    assert "unexpected" not in s.rejected[1]
    assert "unexpected" in s.rejected[3] and "base_model.model.extra.weight" in s.rejected[3]
    assert "missing" not in s.rejected[3]


def test_many_missing_keys_name_a_few_and_count_the_rest():
    x, ups = _sites(3)
    name, _ = ups[0]
    ups[0] = (name, {HEAD: x[HEAD].clone()})  # 5 of the 6 keys missing
    reason = screen_updates(x, ups).rejected[0]
    assert "(+2 more)" in reason
    assert sum(k in reason for k in x) == 3


def test_a_different_shape_is_rejected_naming_key_and_shapes():
    x, ups = _sites(4)
    ups[0][1][HEAD] = torch.zeros(4, 5)
    reason = screen_updates(x, ups).rejected[0]
    assert HEAD in reason and "(4, 5)" in reason and "(3, 5)" in reason


def _lower_rank_site(rank: int, seed: int = 7) -> dict[str, torch.Tensor]:
    """An adapter of the same modules and head as `_sites`', of another LoRA rank."""
    return adapter(gen(seed), rank)


def test_lower_rank_factors_need_the_option_and_get_no_norm():
    x, ups = _sites(4, rank=4)
    ups[1] = ("small", _lower_rank_site(2))
    strict = screen_updates(x, ups)
    assert 1 in strict.rejected and "lora_" in strict.rejected[1]
    s = screen_updates(x, ups, lower_rank=True)
    assert s.accepted == [0, 1, 2, 3]
    assert math.isnan(s.norms[1]) and not math.isnan(s.norms[0])


def test_lower_rank_allows_only_a_smaller_rank_of_lora_factors():
    x, ups = _sites(3, rank=4)
    higher = _lower_rank_site(5)  # a larger rank than the global's
    wrong_in = dict(ups[0][1], **{Q_A: torch.zeros(2, 4)})  # in_features 4, not 5
    head = dict(ups[0][1], **{HEAD: torch.zeros(2, 5)})  # not a LoRA factor
    for state, key in [(higher, Q_A), (wrong_in, Q_A), (head, HEAD)]:
        reason = screen_updates(x, [("s", state)], lower_rank=True).rejected[0]
        assert key in reason and "only the LoRA rank may be smaller" in reason


def test_non_float_tensors_are_rejected():
    x, ups = _sites(3)
    ups[2][1][HEAD] = torch.zeros(3, 5, dtype=torch.int64)
    assert "dtype torch.int64" in screen_updates(x, ups).rejected[2]


def test_first_problem_is_the_reason_keys_before_values():
    x, ups = _sites(3)
    ups[0][1][Q_B][0, 0] = math.nan
    del ups[0][1][HEAD]
    assert screen_updates(x, ups).rejected[0].startswith("keys differ")


@pytest.mark.parametrize(("big", "factor", "rejected"), [(9.0, 10.0, False), (11.0, 10.0, True)])
def test_norm_rule_at_the_threshold(big, factor, rejected):
    x, _ = _sites(0)
    ups = [(f"s{i}", _scaled(x, _unit(x, i), 1.0)) for i in range(3)]
    ups.append(("big", _scaled(x, _unit(x, 9), big)))
    s = screen_updates(x, ups, norm_factor=factor)
    assert s.norms == pytest.approx([1.0, 1.0, 1.0, big], rel=1e-6)
    assert (3 in s.rejected) is rejected
    assert s.accepted[:3] == [0, 1, 2]
    if rejected:
        assert s.rejected[3] == (
            "update norm 11 is more than 10x the median 1 of the other 3 updates"
        )


def test_norm_factor_is_a_parameter_and_inf_disables_the_rule():
    x, _ = _sites(0)
    ups = [(f"s{i}", _scaled(x, _unit(x, i), s)) for i, s in enumerate([1, 1.5, 2, 9])]
    assert screen_updates(x, ups).accepted == [0, 1, 2, 3]
    assert list(screen_updates(x, ups, norm_factor=3).rejected) == [3]
    ups[3] = ("huge", _scaled(x, _unit(x, 3), 1e6))
    assert screen_updates(x, ups, norm_factor=math.inf).accepted == [0, 1, 2, 3]


def test_two_huge_updates_among_seven_are_both_rejected():
    """The median of the others ignores the second outlier when judging the first."""
    x, ups = _sites(7)
    for i in (2, 5):
        ups[i] = (f"attacker{i}", _scaled(x, {k: ups[i][1][k] - x[k] for k in x}, 50.0))
    s = screen_updates(x, ups)
    assert sorted(s.rejected) == [2, 5]
    assert all("more than 10x the median" in r for r in s.rejected.values())


def test_an_update_is_not_counted_in_its_own_median():
    """Norms 1, 1, 12, 12: each 12 is compared with median(1, 1, 12) = 1 and rejected;
    counting itself, the median would be 6.5 and neither would be."""
    x, _ = _sites(0)
    ups = [(f"s{i}", _scaled(x, _unit(x, i), s)) for i, s in enumerate([1, 1, 12, 12])]
    assert sorted(screen_updates(x, ups).rejected) == [2, 3]


def test_two_sites_are_never_rejected_for_their_norm():
    x, _ = _sites(0)
    ups = [("a", _scaled(x, _unit(x, 0), 1.0)), ("b", _scaled(x, _unit(x, 1), 1e4))]
    assert screen_updates(x, ups).accepted == [0, 1]
    # three sites, so the rule applies ...
    three = [*ups, ("c", _scaled(x, _unit(x, 2), 1.0))]
    assert list(screen_updates(x, three).rejected) == [1]
    # ... unless one is rejected for another reason first, leaving two
    three[2][1][HEAD][0, 0] = math.nan
    s = screen_updates(x, three)
    assert s.accepted == [0, 1] and list(s.rejected) == [2]


def test_zero_median_of_the_others_gives_no_scale_so_no_rejection():
    x, _ = _sites(0)
    ups = [("still0", dict(x)), ("still1", dict(x)), ("moved", _scaled(x, _unit(x, 0), 1.0))]
    s = screen_updates(x, ups)
    assert s.accepted == [0, 1, 2] and s.norms == pytest.approx([0.0, 0.0, 1.0])


def test_lower_rank_updates_are_not_counted_for_the_norm_rule():
    """Two full-rank sites plus two lower-rank ones: only two norms, so no norm rejection."""
    x, ups = _sites(2, rank=4)
    ups[1] = ("big", _scaled(x, _unit(x, 1), 1e4))
    ups += [("low1", _lower_rank_site(2, 1)), ("low2", _lower_rank_site(3, 2))]
    s = screen_updates(x, ups, lower_rank=True)
    assert s.accepted == [0, 1, 2, 3]


def test_inputs_are_not_modified():
    x, ups = _sites(4)
    ups[0][1][Q_A][0, 0] = math.nan
    before = [{k: v.clone() for k, v in s.items()} for _, s in ups]
    x_before = {k: v.clone() for k, v in x.items()}
    screen_updates(x, ups)
    assert all(torch.equal(x[k], x_before[k]) for k in x)
    for (_, s), b in zip(ups, before, strict=True):
        for k in s:
            torch.testing.assert_close(s[k], b[k], rtol=0, atol=0, equal_nan=True)


def test_bad_arguments_raise():
    x, ups = _sites(3)
    with pytest.raises(ValueError, match="norm_factor"):
        screen_updates(x, ups, norm_factor=1.0)
    with pytest.raises(ValueError, match="norm_factor"):
        screen_updates(x, ups, norm_factor=math.nan)
    with pytest.raises(ValueError, match="no tensors"):
        screen_updates({}, ups)
    bad_global = dict(x, **{HEAD: torch.full((3, 5), math.nan)})
    with pytest.raises(ValueError, match="global adapter tensor"):
        screen_updates(bad_global, ups)


def test_require_sites_raises_with_every_reason():
    x, ups = _sites(3)
    ups[0][1][Q_A][0, 0] = math.nan
    del ups[2][1][HEAD]
    s = screen_updates(x, ups)
    assert s.reasons() == [f"site0: NaN in {Q_A}", s.reasons()[1]]
    assert s.reasons()[1].startswith("site2: keys differ")
    require_sites(s, 1)  # one left is enough here
    with pytest.raises(NotEnoughSites) as err:
        require_sites(s, 2)
    assert isinstance(err.value, ValueError)
    assert err.value.accepted == 1 and err.value.min_sites == 2
    message = str(err.value)
    assert message.startswith("only 1 of 3 site updates accepted, at least 2 required")
    assert "site0: NaN" in message and "site2: keys differ" in message


def test_require_sites_on_nothing_and_bad_minimum():
    empty = screen_updates(*_sites(0))
    assert empty == Screened([], {}, [], [])
    with pytest.raises(NotEnoughSites, match="only 0 of 0"):
        require_sites(empty, 1)
    with pytest.raises(ValueError, match="min_sites"):
        require_sites(empty, 0)
