"""KeyframePrior(method="rescore"): SAM's merge reused on cached segments, warped and re-scored between keyframes.

The flow method is tested in test_keyframes.py; benchmarks/keyframes.py (section ``rescore``) compares the two.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sgdfuse_ros.priors import KeyframePrior
from sgdfuse_ros.priors.keyframes import channels_last_chunks, warp_stack, warp_with_flow
from sgdfuse_ros.priors.sam import SamPrior, build_sam_tiny

PAIRS = Path(__file__).resolve().parents[1] / "samples" / "pairs"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def bundled(name: str = "00537D.png") -> tuple[torch.Tensor, torch.Tensor]:
    ir = cv2.imread(str(PAIRS / "ir" / name), cv2.IMREAD_GRAYSCALE)
    rgb = cv2.cvtColor(cv2.imread(str(PAIRS / "vi" / name), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return (torch.from_numpy(ir).float().div(255.0)[None, None],
            torch.from_numpy(rgb).float().div(255.0).permute(2, 0, 1)[None].contiguous())


def tiny_sam() -> SamPrior:
    """Random weights, thresholds loose enough that segments are kept on the bundled pairs."""
    return SamPrior(build_sam_tiny(), name="sam:tiny", points_per_side=8, pred_iou_thresh=0.0,
                    stability_score_thresh=0.5, stability_score_offset=0.02, keep_segments=True)


def test_masks_from_the_kept_segments_equal_sams_own_masks():
    sam = tiny_sam()
    t, v = bundled()
    m_ir, m_vis = sam.masks(t, v)
    assert all(len(seg) > 0 for seg in sam.last_segments)
    again = sam.masks_from_segments(sam.last_segments, t, v)
    torch.testing.assert_close(again[0], m_ir, rtol=0, atol=1e-6)
    torch.testing.assert_close(again[1], m_vis, rtol=0, atol=1e-6)
    # An image without segments gets the fallback's per-pixel mask, as in masks() (empty_fallback).
    empty = [sam.last_segments[0][:0], sam.last_segments[1]]
    fallback_vis = sam.masks_from_segments(empty, t, v)[1]
    assert float(fallback_vis.max()) > 0.0 and not torch.allclose(fallback_vis, m_vis)


def test_a_still_frame_gives_back_the_keyframe_masks_exactly():
    t, v = bundled("FLIR_08835.jpg")
    prior = KeyframePrior(tiny_sam(), 5, method="rescore")
    key = prior.masks(t, v)
    again = prior.masks(t, v)
    assert not prior.last_keyframe and prior.inner_calls == 1
    for a, b in zip(again, key, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


class KnownSegments(SamPrior):
    """SAM's merge on segments the test supplies (``objects`` at SAM's 256-px grid), for a scene with known objects."""

    def __init__(self) -> None:
        super().__init__(build_sam_tiny(), name="known")
        self.objects: torch.Tensor | None = None

    def masks(self, thermal: torch.Tensor, visible_rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.last_segments = [self.objects, self.objects]  # the same objects in both cameras (registered)
        return self.masks_from_segments(self.last_segments, thermal, visible_rgb)


def ellipse_scene(shift: tuple[float, float], warm: tuple[float, ...], size=(240, 320), grid=(192, 256)):
    """Thermal and visible frames of three ellipses on a textured background, everything moved by ``shift`` px,
    and the ellipses as bool segments [3, *grid]. ``warm``: each ellipse's thermal level (0.3: the background's)."""
    h, w = size
    rng = np.random.default_rng(1)
    texture = cv2.GaussianBlur(rng.random((h + 40, w + 40)).astype(np.float32), (0, 0), 4)
    texture = (texture - texture.min()) / (texture.max() - texture.min())  # about 0.1 std: enough for the flow
    mat = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
    background = cv2.warpAffine(texture, mat, (w + 40, h + 40), borderMode=cv2.BORDER_REFLECT)[20:-20, 20:-20]
    thermal = 0.2 + 0.2 * background
    visible = 0.3 + 0.4 * background
    objects = []
    for (cx, cy), level in zip(((80, 80), (200, 90), (150, 180)), warm, strict=True):
        disc = np.zeros((h, w), np.float32)
        cv2.ellipse(disc, (int(cx + shift[0]), int(cy + shift[1])), (30, 20), 0, 0, 360, 1.0, -1)
        # Textured like the background (and moving with it), so the flow can follow the ellipse whatever its level.
        thermal = np.where(disc > 0, thermal + (level - 0.3), thermal)
        visible = np.where(disc > 0, 0.9, visible)
        objects.append(cv2.resize(disc, grid[::-1], interpolation=cv2.INTER_AREA) > 0.5)
    t = torch.from_numpy(thermal.astype(np.float32))[None, None]
    v = torch.from_numpy(np.repeat(visible[None], 3, axis=0).astype(np.float32))[None]
    return t, v, torch.from_numpy(np.stack(objects))


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum()) / max(1, int((a | b).sum()))


def test_rescoring_follows_the_move_and_re_judges_an_object_that_warms_up():
    """Keyframe: ellipses 1 and 2 warm, ellipse 3 as cold as the background. Next frame: moved by (6, 4) px and
    ellipse 3 warm. Re-scoring moves the segments with the flow and switches ellipse 3 on; carrying the merged
    mask by flow moves it too but cannot know about ellipse 3. Measured: IoU 0.922 re-scored, 0.659 flow (the flow
    itself is worst on ellipse 3, whose appearance changed: its segment warps with IoU 0.82, the others 0.99)."""
    source = KnownSegments()
    t0, v0, source.objects = ellipse_scene((0, 0), (0.9, 0.9, 0.3))
    t1, v1, objects1 = ellipse_scene((6, 4), (0.9, 0.9, 0.6))
    source.objects = objects1
    truth = source.masks(t1, v1)[0]
    source.objects = ellipse_scene((0, 0), (0.9, 0.9, 0.3))[2]
    key = source.masks(t0, v0)[0]
    assert iou(key, source.masks_from_segments([source.objects[:2]] * 2, t0, v0)[0]) > 0.99  # 3 is off at first
    assert iou(truth, source.masks_from_segments([objects1[:2]] * 2, t1, v1)[0]) < 0.8  # ellipse 3 matters
    results = {}
    for method in ("flow", "rescore"):
        source.objects = ellipse_scene((0, 0), (0.9, 0.9, 0.3))[2]
        prior = KeyframePrior(source, 5, method=method)
        prior.masks(t0, v0)
        results[method] = iou(prior.masks(t1, v1)[0], truth)
    assert results["rescore"] >= 0.88, results
    assert results["rescore"] > results["flow"] + 0.15, results


def test_warp_stack_equals_warping_each_map_also_beyond_one_remap_call():
    rng = np.random.default_rng(0)
    stack = torch.from_numpy((rng.random((300, 24, 32)) > 0.5).astype(np.float32))
    flow = rng.normal(0, 2, (12, 16, 2)).astype(np.float32)
    chunks = channels_last_chunks(stack)
    assert [c.shape[2] for c in chunks] == [128, 128, 44]
    warped = torch.cat([warp_stack(c, flow) for c in chunks])
    expected = np.stack([warp_with_flow(m, flow) for m in stack.numpy()])
    # OpenCV interpolates multi-channel maps at 1/32 px, single maps exactly: equal up to that rounding.
    difference = np.abs(warped.numpy() - expected)
    assert difference.max() < 0.04 and difference.mean() < 0.01
    assert warp_stack(channels_last_chunks(stack[:1])[0], flow).shape == (1, 24, 32)
