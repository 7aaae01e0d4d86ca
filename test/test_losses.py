"""Stage I losses: ideal cases, hand-computed values, mask weighting, behaviour on a bundled pair."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sgdfuse_ros.losses import (
    Stage1Loss,
    gradient_loss,
    intensity_loss,
    masked_mean,
    sobel_magnitude,
)

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "pairs"
EPS_SHIFT = 1e-4  # sqrt of the 1e-8 inside the gradient magnitude


def _img(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def _step() -> torch.Tensor:
    """3x3 image with a vertical step between columns 1 and 2."""
    return _img([[0.0, 0.0, 1.0]] * 3)


def test_intensity_loss_zero_for_max_of_inputs():
    torch.manual_seed(0)
    ir, vis = torch.rand(2, 1, 8, 9), torch.rand(2, 1, 8, 9)
    assert intensity_loss(torch.maximum(ir, vis), ir, vis).item() == 0.0


def test_losses_zero_when_inputs_and_fused_agree():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 10, 12)
    out = Stage1Loss(1.5, 1.0)(x, x, x.clone())
    assert out.total.item() == 0.0 and out.intensity.item() == 0.0 and out.gradient.item() == 0.0


def test_intensity_loss_hand_value():
    ir = _img([[0.0, 1.0], [0.2, 0.4]])
    vis = _img([[0.5, 0.5], [0.5, 0.5]])
    fused = torch.zeros_like(ir)
    # max = [[.5, 1], [.5, .5]] -> mean |0 - max| = 2.5 / 4
    assert intensity_loss(fused, ir, vis).item() == pytest.approx(0.625)


def test_sobel_magnitude_of_step():
    mag = sobel_magnitude(_step())[0, 0]
    # Replicate padding: column 0 sees 0 on both sides; columns 1 and 2 see 1 - 0 weighted 1+2+1 = 4.
    expected = torch.tensor([[0.0, 4.0, 4.0]] * 3)
    assert torch.allclose(mag, expected, atol=2 * EPS_SHIFT)


def test_gradient_loss_hand_value():
    ir = _step()
    vis = torch.zeros_like(ir)
    fused = torch.zeros_like(ir)
    # Target magnitude [0, 4, 4] per row; fused magnitude ~0: mean over 9 pixels = 6 * 4 / 9.
    assert gradient_loss(fused, ir, vis).item() == pytest.approx(24.0 / 9.0, abs=1e-3)
    # Taking the edge from either input is enough: the target is the larger of the two magnitudes.
    assert gradient_loss(ir, ir, vis).item() == pytest.approx(0.0, abs=1e-6)
    assert gradient_loss(1.0 - ir, ir, vis).item() == pytest.approx(0.0, abs=1e-6)


def test_mask_restricts_region():
    ir = _step()
    vis = torch.zeros_like(ir)
    fused = torch.zeros_like(ir)
    left = torch.zeros_like(ir)
    left[..., 0] = 1.0  # column 0 has no edge and ir = 0 there
    right = 1.0 - left
    assert gradient_loss(fused, ir, vis, mask=left).item() == pytest.approx(0.0, abs=1e-6)
    assert gradient_loss(fused, ir, vis, mask=right).item() == pytest.approx(4.0, abs=1e-3)
    # intensity: the error is 1 in column 2 only -> 0 on the left, 1/2 over columns 1-2
    assert intensity_loss(fused, ir, vis, mask=left).item() == 0.0
    assert intensity_loss(fused, ir, vis, mask=right).item() == pytest.approx(0.5)


def test_soft_mask_is_weighted_mean_and_empty_mask_is_zero():
    err = _img([[1.0, 3.0]])
    mask = _img([[0.25, 0.75]])
    assert masked_mean(err, mask).item() == pytest.approx((0.25 * 1 + 0.75 * 3) / 1.0)
    assert masked_mean(err, torch.zeros_like(mask)).item() == 0.0
    with pytest.raises(ValueError, match="mask"):
        masked_mean(err, torch.ones(1, 2, 1, 2))


def test_three_channel_fused_broadcasts_single_channel_inputs():
    torch.manual_seed(1)
    ir, vis = torch.rand(1, 1, 6, 7), torch.rand(1, 1, 6, 7)
    target = torch.maximum(ir, vis)
    fused = target.repeat(1, 3, 1, 1)
    assert intensity_loss(fused, ir, vis).item() == 0.0
    # one channel off by 0.3 everywhere -> channel mean error 0.1
    fused[:, 1] += 0.3
    assert intensity_loss(fused, ir, vis).item() == pytest.approx(0.1, abs=1e-6)


def test_stage1_loss_weights_and_finite_gradients_on_flat_image():
    fused = torch.full((1, 1, 8, 8), 0.5, requires_grad=True)  # flat: |Sobel| sits at the sqrt(eps) floor
    ir = torch.zeros(1, 1, 8, 8)
    ir[..., 4:] = 1.0
    vis = torch.zeros_like(ir)
    out = Stage1Loss(intensity_weight=2.0, gradient_weight=0.5)(fused, ir, vis)
    assert out.total.item() == pytest.approx(2.0 * out.intensity.item() + 0.5 * out.gradient.item())
    out.total.backward()
    assert torch.isfinite(fused.grad).all() and fused.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        Stage1Loss(-1.0, 1.0)


def test_pixel_average_has_positive_loss_on_bundled_pair():
    from sgdfuse_ros.training.data import load_pair

    ir_np, y_np = load_pair(SAMPLES / "ir" / "FLIR_04269.jpg", SAMPLES / "vi" / "FLIR_04269.jpg")
    ir, vis = torch.from_numpy(ir_np)[None, None], torch.from_numpy(y_np)[None, None]
    loss = Stage1Loss()
    avg = loss((ir + vis) / 2, ir, vis)
    best_intensity = loss(torch.maximum(ir, vis), ir, vis)
    assert best_intensity.intensity.item() == 0.0
    # The average halves every difference between the inputs: worse than the max on intensity, and it
    # loses edge strength wherever only one input has the edge.
    assert avg.intensity.item() > 0.01 and avg.gradient.item() > 0.01


def test_structure_loss_is_zero_for_identical_sources_and_grows_with_noise():
    from sgdfuse_ros.losses import structure_loss

    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, 32, 32, generator=g)
    assert structure_loss(image, image, image.clone()).item() == pytest.approx(0.0, abs=1e-5)
    noisy = (image + 0.3 * torch.randn(1, 1, 32, 32, generator=g)).clamp(0, 1)
    assert structure_loss(noisy, image, image).item() > 0.1


def test_gradient_gain_asks_for_stronger_edges():
    ir = torch.zeros(1, 1, 8, 8)
    ir[..., 4:] = 0.5
    vis = torch.zeros_like(ir)
    # The source itself meets a gain of 1 exactly; a gain of 2 is met by an edge twice as high.
    assert gradient_loss(ir, ir, vis, gain=1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert gradient_loss(2 * ir, ir, vis, gain=2.0).item() == pytest.approx(0.0, abs=1e-3)  # sqrt(eps) floor
    assert gradient_loss(ir, ir, vis, gain=2.0).item() > 0.1
    with pytest.raises(ValueError):
        Stage1Loss(gradient_gain=0.0)
