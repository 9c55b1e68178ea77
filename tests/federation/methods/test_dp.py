"""DP-FedAvg's release: clipping bounds each site's pull, the noise has the stated
standard deviation, and the noise stream is the generator's."""

from __future__ import annotations

import pytest
import torch

from fedmedlora.federation.methods.dp import dp_average, noise_std

SHAPES = {"m.lora_A.weight": (8, 300), "m.lora_B.weight": (300, 8)}


def _states(seed: int, n: int, scale: float):
    g = torch.Generator().manual_seed(seed)
    glob = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    states = [{k: glob[k] + scale * torch.randn(s, generator=g) for k, s in SHAPES.items()}
              for _ in range(n)]  # fmt: skip
    return glob, states


def test_noise_has_std_z_c_over_n_and_updates_are_clipped():
    glob, states = _states(0, 4, 1.0)  # norms ~ sqrt(4800) ≈ 69 >> C
    out, info = dp_average(
        glob,
        states,
        clip_norm=2.0,
        noise_multiplier=1.5,
        generator=torch.Generator().manual_seed(1),
    )
    assert info["noise_std"] == pytest.approx(1.5 * 2.0 / 4) and info["clipped"] == 4
    clipped_mean = {
        k: sum((s[k] - glob[k]) * (2.0 / n) for s, n in zip(states, info["norms"], strict=True)) / 4
        for k in SHAPES
    }
    noise = torch.cat([(out[k] - glob[k] - clipped_mean[k]).flatten() for k in SHAPES])
    assert noise.numel() == 4800
    assert float(noise.std()) == pytest.approx(0.75, rel=0.05)
    assert abs(float(noise.mean())) < 0.05


def _release(glob, states, seed: int):
    return dp_average(
        glob,
        states,
        clip_norm=1.0,
        noise_multiplier=1.0,
        generator=torch.Generator().manual_seed(seed),
    )


def test_small_updates_pass_unclipped_and_noise_follows_the_generator():
    glob, states = _states(2, 3, 1e-3)  # norms ~ 0.07 < C
    a, info = _release(glob, states, 5)
    b, _ = _release(glob, states, 5)
    c, _ = _release(glob, states, 6)
    assert info["clipped"] == 0
    assert all(torch.equal(a[k], b[k]) for k in SHAPES)
    assert any(not torch.equal(a[k], c[k]) for k in SHAPES)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="noise_multiplier > 0"):
        noise_std(0.0, 1.0, 3)
    glob, states = _states(3, 2, 0.1)
    with pytest.raises(ValueError, match="clip_norm"):
        dp_average(glob, states, clip_norm=0.0, noise_multiplier=1.0, generator=torch.Generator())
