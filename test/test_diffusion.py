"""Stage II noise schedule and DDIM sampler: golden values computed by hand, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sgdfuse_ros.models.diffusion import (
    DDIMSampler,
    NoiseSchedule,
    ScheduleConfig,
    ddim_step,
    sampling_timesteps,
    seeded_noise,
)


def hand_alphas_cumprod(t: int, beta_start: float = 1e-6, beta_end: float = 1e-2, T: int = 1000) -> float:
    """prod_{s<=t} (1 - beta_s) with beta_s linear in s, as exp(sum log1p(-beta_s)) (independent of the code)."""
    return math.exp(math.fsum(math.log1p(-(beta_start + (beta_end - beta_start) * s / (T - 1))) for s in range(t + 1)))


# alphas_cumprod of the authors' schedule (linear beta 1e-6 .. 1e-2, T = 1000), written out.
GOLDEN = {
    0: 0.999999,  # 1 - beta_0
    1: 0.999999 * (1.0 - (1e-6 + (1e-2 - 1e-6) / 999)),  # 0.999987991002
    99: 0.95155185124998,
    249: 0.73195198258795,
    499: 0.28615799923641,
    999: 0.00662264393544,
}


@pytest.mark.parametrize("t", sorted(GOLDEN))
def test_linear_schedule_matches_the_closed_form(t):
    schedule = NoiseSchedule()
    assert schedule.alphas_cumprod[t] == pytest.approx(GOLDEN[t], rel=1e-12, abs=1e-13)
    assert schedule.alphas_cumprod[t] == pytest.approx(hand_alphas_cumprod(t), rel=1e-12)
    assert schedule.betas[0] == pytest.approx(1e-6) and schedule.betas[-1] == pytest.approx(1e-2)


def test_add_noise_is_the_forward_process():
    schedule = NoiseSchedule()
    x0 = torch.tensor([[[[0.5, -1.0]]], [[[0.25, 1.0]]]])
    noise = torch.tensor([[[[1.0, 2.0]]], [[[-1.0, 0.5]]]])
    t = torch.tensor([499, 0])
    x_t = schedule.add_noise(x0, noise, t)
    a, b = GOLDEN[499], GOLDEN[0]
    expected = torch.tensor(
        [
            [[[math.sqrt(a) * 0.5 + math.sqrt(1 - a) * 1.0, -math.sqrt(a) + math.sqrt(1 - a) * 2.0]]],
            [[[math.sqrt(b) * 0.25 - math.sqrt(1 - b), math.sqrt(b) + math.sqrt(1 - b) * 0.5]]],
        ]
    )
    torch.testing.assert_close(x_t, expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="timesteps"):
        schedule.add_noise(x0, noise, torch.tensor([1000, 0]))


def test_one_ddim_step_matches_the_hand_computed_update():
    # abar_t = 0.64 (sqrt 0.8), abar_prev = 0.81 (sqrt 0.9), sqrt(1 - 0.81) = sqrt(0.19) = 0.4358898944
    x_t = torch.tensor([0.5, -0.2])
    x0_hat = torch.tensor([0.3, -0.1])
    # eps_hat = (x_t - 0.8 * x0_hat) / 0.6 = [0.4333333, -0.2]
    # x_prev  = 0.9 * x0_hat + 0.4358899 * eps_hat = [0.27 + 0.1888856, -0.09 - 0.0871780]
    expected = torch.tensor([0.4588856209, -0.1771779789])
    torch.testing.assert_close(ddim_step(x_t, x0_hat, 0.64, 0.81), expected, rtol=0, atol=1e-7)
    # abar_prev = 1 jumps to the clean estimate.
    torch.testing.assert_close(ddim_step(x_t, x0_hat, 0.64, 1.0), x0_hat)


def test_sampling_timesteps_start_at_strength_and_stay_distinct():
    schedule = NoiseSchedule()
    assert sampling_timesteps(schedule, 4, 1.0) == [999, 749, 499, 249]
    assert sampling_timesteps(schedule, 4, 0.5) == [499, 374, 249, 124]
    assert sampling_timesteps(schedule, 1, 0.3) == [299]
    with pytest.raises(ValueError, match="strength"):
        sampling_timesteps(schedule, 4, 0.0)
    short = NoiseSchedule(ScheduleConfig(num_timesteps=10))
    assert short.start_timestep(0.2) == 1
    with pytest.raises(ValueError, match="steps"):
        sampling_timesteps(short, 3, 0.2)  # only timesteps 1 and 0 are left


def test_sampler_noises_the_start_and_applies_ddim_between_calls():
    schedule = NoiseSchedule()
    sampler = DDIMSampler(schedule, steps=2, strength=0.5)  # timesteps [499, 249]
    x_start = torch.linspace(-1, 1, 2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    seen = []

    def predict(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append((x_t.clone(), t.clone()))
        return torch.tanh(0.5 * x_t)

    out = sampler.sample(predict, x_start, seed=7)
    noise = torch.randn(x_start.shape, generator=torch.Generator().manual_seed(7))
    a0, a1 = GOLDEN[499], GOLDEN[249]
    x_first = math.sqrt(a0) * x_start + math.sqrt(1 - a0) * noise
    torch.testing.assert_close(seen[0][0], x_first, rtol=1e-6, atol=1e-6)
    assert seen[0][1].tolist() == [499, 499] and seen[1][1].tolist() == [249, 249]
    x0_first = torch.tanh(0.5 * x_first)
    eps = (x_first - math.sqrt(a0) * x0_first) / math.sqrt(1 - a0)
    x_second = math.sqrt(a1) * x0_first + math.sqrt(1 - a1) * eps
    torch.testing.assert_close(seen[1][0], x_second, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, torch.tanh(0.5 * x_second), rtol=1e-5, atol=1e-6)


def test_sampler_is_deterministic_for_a_seed_and_changes_with_it():
    sampler = DDIMSampler(NoiseSchedule(), steps=3, strength=0.6)
    x_start = torch.rand(1, 3, 8, 8) * 2 - 1

    def predict(x_t, t):
        return torch.tanh(x_t * (1.0 + t[:, None, None, None] / 1000.0))

    first = sampler.sample(predict, x_start, seed=3)
    assert torch.equal(first, sampler.sample(predict, x_start, seed=3))
    assert not torch.allclose(first, sampler.sample(predict, x_start, seed=4))
    np.testing.assert_array_equal(
        seeded_noise((2, 2), 5, "cpu", torch.float32).numpy(),
        torch.randn(2, 2, generator=torch.Generator().manual_seed(5)).numpy(),
    )
