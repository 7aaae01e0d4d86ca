"""Noise schedule and deterministic DDIM sampler for Stage II, kept apart from the network (diffusers style).

Notation (DDPM / DDIM): a clean image ``x0`` in [-1, 1] is noised to

    x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps,        eps ~ N(0, I),   t = 0 .. T-1,

with ``abar_t = prod_{s <= t} (1 - beta_s)`` (``alphas_cumprod[t]``; index 0 is the first noising step, so even
t = 0 carries a little noise). The network predicts ``x0`` directly (x0 parameterisation, see docs/stage2.md);
the DDIM update with eta = 0 re-noises that prediction deterministically to the next, smaller timestep:

    eps_hat = (x_t - sqrt(abar_t) * x0_hat) / sqrt(1 - abar_t)
    x_prev  = sqrt(abar_prev) * x0_hat + sqrt(1 - abar_prev) * eps_hat

Sampling starts from a noised F1 (``strength`` in (0, 1] picks the start timestep) instead of pure noise, and
the output is the ``x0_hat`` of the last network call. All randomness comes from a CPU ``torch.Generator``
seeded with the configured seed, so the same frame always gives the same output (no flicker in a video); since
that noise depends only on (shape, seed, device), the sampler draws it once and reuses it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from ..tensor_cache import cached_constant

__all__ = [
    "DDIMSampler",
    "NoiseSchedule",
    "ScheduleConfig",
    "ddim_step",
    "sampling_timesteps",
    "seeded_noise",
]


@dataclass(frozen=True)
class ScheduleConfig:
    """Training noise schedule. Defaults are the authors' configuration: linear beta 1e-6 .. 1e-2, T = 1000."""

    num_timesteps: int = 1000
    beta_start: float = 1e-6
    beta_end: float = 1e-2
    kind: str = "linear"

    def __post_init__(self) -> None:
        if self.kind != "linear":
            raise ValueError(f"unknown schedule kind {self.kind!r}; allowed: 'linear'")
        if self.num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {self.num_timesteps}")
        if not (0.0 < self.beta_start <= self.beta_end < 1.0):
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ScheduleConfig:
        return cls(**data)


class NoiseSchedule:
    """Precomputed betas / alphas_cumprod (float64 NumPy for exactness, float32 tensors on use).

    ``betas[t] = beta_start + (beta_end - beta_start) * t / (T - 1)`` (``np.linspace``, as diffusers'
    "linear" schedule); ``alphas_cumprod[t] = prod_{s=0..t} (1 - betas[s])``.
    """

    def __init__(self, config: ScheduleConfig | None = None) -> None:
        self.config = config or ScheduleConfig()
        c = self.config
        self.betas = np.linspace(c.beta_start, c.beta_end, c.num_timesteps, dtype=np.float64)
        self.alphas_cumprod = np.cumprod(1.0 - self.betas)

    @property
    def num_timesteps(self) -> int:
        return self.config.num_timesteps

    def _lookup(self, table: np.ndarray, t: Tensor) -> Tensor:
        if t.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"timesteps must be integer tensors, got {t.dtype}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.num_timesteps - 1}], got {t.tolist()}")
        return torch.as_tensor(table)[t.cpu()].to(device=t.device, dtype=torch.float32)

    def abar(self, t: Tensor) -> Tensor:
        """alphas_cumprod at integer timesteps ``t`` (any shape, long) -> float32 tensor on ``t.device``."""
        return self._lookup(self.alphas_cumprod, t)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Forward process q(x_t | x0): x0 [N,C,H,W], noise like x0, t [N] long -> x_t [N,C,H,W].

        sqrt(abar) and sqrt(1 - abar) are taken in float64 before the cast: 1 - abar in float32 loses most digits
        near t = 0 (abar_0 = 1 - 1e-6).
        """
        if t.dim() != 1 or t.shape[0] != x0.shape[0]:
            raise ValueError(f"t must be [N] with N = {x0.shape[0]}, got {tuple(t.shape)}")
        shape = (-1, *([1] * (x0.dim() - 1)))
        t = t.to(x0.device)
        signal = self._lookup(np.sqrt(self.alphas_cumprod), t).view(shape)
        sigma = self._lookup(np.sqrt(1.0 - self.alphas_cumprod), t).view(shape)
        return signal * x0 + sigma * noise

    def start_timestep(self, strength: float) -> int:
        """The timestep a sampler with ``strength`` in (0, 1] starts from: round(strength * T) - 1, at least 0."""
        if not (0.0 < strength <= 1.0):
            raise ValueError(f"strength must be in (0, 1], got {strength!r}")
        return max(0, min(self.num_timesteps - 1, int(round(strength * self.num_timesteps)) - 1))

    def __repr__(self) -> str:
        return f"NoiseSchedule({self.config})"


def sampling_timesteps(schedule: NoiseSchedule, steps: int, strength: float) -> list[int]:
    """Descending timesteps of a ``steps``-step sampler that starts at ``schedule.start_timestep(strength)``.

    Evenly spaced from the start towards 0, endpoint excluded: strength 1, 4 steps, T = 1000 ->
    [999, 749, 499, 249]; strength 0.5 -> [499, 374, 249, 124]. After the last one the sampler jumps to the clean
    image (abar_prev = 1), i.e. it returns that step's x0 prediction. Raises ValueError when ``steps`` is not in
    [1, start + 1] (more steps than distinct timesteps).
    """
    start = schedule.start_timestep(strength)
    if not (1 <= steps <= start + 1):
        raise ValueError(f"steps must be in [1, {start + 1}] for strength {strength}, got {steps}")
    ts = np.floor(np.linspace(start, 0, steps, endpoint=False)).astype(np.int64)
    return [int(t) for t in ts]


def ddim_step(x_t: Tensor, x0_hat: Tensor, abar_t: float, abar_prev: float) -> Tensor:
    """One deterministic DDIM update (eta = 0) in the x0 parameterisation.

    Args:
        x_t: current sample [N,C,H,W].
        x0_hat: the network's clean-image estimate at t, same shape.
        abar_t: alphas_cumprod at t (0 < abar_t < 1).
        abar_prev: alphas_cumprod at the next (smaller) timestep; 1.0 jumps to x0_hat.
    Returns:
        x_prev = sqrt(abar_prev) * x0_hat + sqrt(1 - abar_prev) * eps_hat with
        eps_hat = (x_t - sqrt(abar_t) * x0_hat) / sqrt(1 - abar_t).
    """
    eps_hat = (x_t - abar_t**0.5 * x0_hat) / (1.0 - abar_t) ** 0.5
    return abar_prev**0.5 * x0_hat + (1.0 - abar_prev) ** 0.5 * eps_hat


def seeded_noise(shape: tuple[int, ...], seed: int, device: torch.device | str, dtype: torch.dtype) -> Tensor:
    """Standard normal noise from a CPU ``torch.Generator`` seeded with ``seed``, moved to ``device``.

    Drawn on the CPU so the same seed gives the same noise on every device (CUDA generators differ).
    """
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


#: Start-noise tensors a sampler keeps (one per (shape, seed, device); a camera needs one, a dataset a few sizes).
NOISE_CACHE_SIZE = 4


@cached_constant(maxsize=32)
def _timestep_batch(t: int, n: int, device: torch.device) -> Tensor:
    """[n] long tensor filled with ``t`` on ``device`` (one per sampler step, made once)."""
    return torch.full((n,), t, dtype=torch.long, device=device)


#: ``predict_x0(x_t, t) -> x0_hat``: x_t [N,C,H,W], t [N] long -> [N,C,H,W] in [-1, 1].
X0Predictor = Callable[[Tensor, Tensor], Tensor]


class DDIMSampler:
    """Few-step deterministic DDIM (eta = 0) that starts from a noised image instead of pure noise.

    ``sample(predict_x0, x_start, seed)`` noises ``x_start`` (e.g. F1 in [-1, 1]) to the start timestep with
    noise from a generator seeded with ``seed``, runs ``steps`` network calls and returns the last x0 estimate.
    The start noise (already scaled by sqrt(1 - abar) of the start timestep) is drawn once per (shape, seed,
    device) from the seeded CPU generator, exactly as :func:`seeded_noise`, and reused: bit-identical outputs,
    no per-frame generator run and host-to-device copy.
    """

    def __init__(self, schedule: NoiseSchedule, steps: int = 4, strength: float = 0.5) -> None:
        self.schedule = schedule
        self.timesteps = sampling_timesteps(schedule, steps, strength)
        self._abar = [float(a) for a in schedule.alphas_cumprod]
        self.steps = steps
        self.strength = strength
        self._noise: OrderedDict[tuple[tuple[int, ...], int, torch.device], Tensor] = OrderedDict()

    def start_noise(self, shape: tuple[int, ...], seed: int, device: torch.device) -> Tensor:
        """sqrt(1 - abar_start) * seeded_noise(shape, seed, device) (float32), made once per key and cached.

        Shared between calls: do not modify it in place.
        """
        key = (tuple(int(v) for v in shape), int(seed), torch.device(device))
        noise = self._noise.get(key)
        if noise is None:
            with torch.inference_mode(False), torch.no_grad():  # an ordinary tensor, usable in any mode
                t0 = self.timesteps[0]
                noise = (1.0 - self._abar[t0]) ** 0.5 * seeded_noise(key[0], key[1], key[2], torch.float32)
            self._noise[key] = noise
            while len(self._noise) > NOISE_CACHE_SIZE:
                self._noise.popitem(last=False)
        else:
            self._noise.move_to_end(key)
        return noise

    def clear_cache(self) -> None:
        """Drop the cached start noise (e.g. after moving to another device)."""
        self._noise.clear()

    def sample(self, predict_x0: X0Predictor, x_start: Tensor, seed: int = 0) -> Tensor:
        """x_start [N,C,H,W] in [-1, 1] -> final x0 estimate [N,C,H,W] (float32, the predictor's range)."""
        x_start = x_start.float()
        n = x_start.shape[0]
        abar = self._abar
        t0 = self.timesteps[0]
        x = abar[t0] ** 0.5 * x_start + self.start_noise(tuple(x_start.shape), seed, x_start.device)
        x0_hat = x_start
        for i, t in enumerate(self.timesteps):
            x0_hat = predict_x0(x, _timestep_batch(t, n, x_start.device)).float()
            if i + 1 < len(self.timesteps):
                x = ddim_step(x, x0_hat, abar[t], abar[self.timesteps[i + 1]])
        return x0_hat

    def __repr__(self) -> str:
        return f"DDIMSampler(steps={self.steps}, strength={self.strength}, timesteps={self.timesteps})"
