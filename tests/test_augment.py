"""Data augmentation (stages/lib/learning/augment.py), fastai's aug_transforms without flips:
seeded, keeping what the batch is, and each transform moving pixels as it should, on
synthetic blobs in place of digits."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from stages.lib.learning.augment import AUG_DEFAULTS, Augment, apply, find_coeffs, warp_mat

SIDE = 28
CENTRE = (SIDE - 1) / 2  # 13.5: the middle, in pixel coordinates
# One transform alone: the others' maxima neutral.
ROTATE = dict(max_rotate=30.0, max_zoom=1.0, max_warp=0.0, max_lighting=0.0,
              p_affine=1.0, p_lighting=0.0)
ZOOM = dict(ROTATE, max_rotate=0.0, max_zoom=1.5)
WARP = dict(ROTATE, max_rotate=0.0, max_warp=0.2)
LIGHTING = dict(ROTATE, max_rotate=0.0, max_lighting=0.4, p_affine=0.0, p_lighting=1.0)
EVERYTHING = dict(max_rotate=45.0, max_zoom=2.0, max_warp=0.3, max_lighting=0.9,
                  p_affine=1.0, p_lighting=1.0)


def blob(n: int = 1, row: float = CENTRE, col: float = CENTRE, sigma: float = 2.5):
    """n copies of a Gaussian spot of ink, N×784, peak near 1 and a background of ~0."""
    rows, cols = torch.meshgrid(torch.arange(float(SIDE)), torch.arange(float(SIDE)),
                                indexing="ij")
    spot = torch.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * sigma ** 2))
    return spot.reshape(1, -1).repeat(n, 1)


def digits(n: int = 32) -> torch.Tensor:
    """Digit-like images: a few strokes of ink at random places, exact 0s and 1s included."""
    g = torch.Generator().manual_seed(123)
    ink = sum(blob(n, *(6 + 16 * torch.rand(2, generator=g)).tolist(), sigma=1.5)
              for _ in range(4))
    return (ink * 1.5).clamp(0, 1)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ink_centre(x: torch.Tensor) -> torch.Tensor:
    """N×2 (row, col) centre of mass of each image's ink."""
    images = x.view(-1, SIDE, SIDE)
    coords = torch.arange(float(SIDE))
    mass = images.sum(dim=(1, 2))
    return torch.stack([(images.sum(2) * coords).sum(1), (images.sum(1) * coords).sum(1)],
                       dim=1) / mass[:, None]


def spread(x: torch.Tensor) -> torch.Tensor:
    """Each image's ink's radius of gyration, in pixels: how far out its ink lies."""
    images = x.view(-1, SIDE, SIDE)
    rows, cols = torch.meshgrid(torch.arange(float(SIDE)), torch.arange(float(SIDE)),
                                indexing="ij")
    (row, col), mass = ink_centre(x).T[..., None, None], images.sum(dim=(1, 2))
    return ((images * ((rows - row) ** 2 + (cols - col) ** 2)).sum(dim=(1, 2)) / mass).sqrt()


def test_the_same_seed_augments_the_same_a_new_seed_differently():
    x, augment = digits(), Augment(**AUG_DEFAULTS)
    first, again = augment(x, seeded(0)), augment(x, seeded(0))
    assert torch.equal(first, again)
    assert not torch.equal(first, augment(x, seeded(1)))
    assert not torch.equal(first, x)


def test_the_batch_keeps_its_shape_dtype_and_range_and_the_input_is_untouched():
    x = digits()
    before = x.clone()
    out = Augment(**EVERYTHING)(x, seeded())
    assert torch.equal(x, before)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1
    assert out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("settings", [
    dict(EVERYTHING, p_affine=0.0, p_lighting=0.0),  # nothing fires
    dict(max_rotate=0.0, max_zoom=1.0, max_warp=0.0, max_lighting=0.0,  # fires as identity
         p_affine=1.0, p_lighting=1.0),
])
def test_nothing_firing_is_the_identity_exactly(settings):
    x = digits()
    out = Augment(**settings)(x, seeded())
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def test_images_no_transform_fires_on_keep_their_pixels_in_a_mixed_batch():
    x = digits(64)
    augment = Augment(**dict(EVERYTHING, p_affine=0.3, p_lighting=0.3))
    draw = augment.draw(len(x), seeded())
    still = ((draw.angle == 0) & (draw.zoom == 1) & (draw.warp_x == 0) & (draw.warp_y == 0)
             & (draw.change == 0.5) & (draw.scale == 1))
    assert 0 < still.sum() < len(x)  # 0.7**6 of them, about 7
    out = apply(x, draw)
    assert torch.equal(out[still], x[still])
    assert all(not torch.equal(a, b) for a, b in zip(out[~still], x[~still]))


def test_the_generator_moves_as_far_whatever_fires_and_no_other_does():
    x = digits()
    global_state = torch.get_rng_state()
    states = []
    for p in (0.0, 0.5, 1.0):
        g = seeded()
        Augment(**dict(EVERYTHING, p_affine=p, p_lighting=p))(x, g)
        states.append(g.get_state())
    assert all(torch.equal(state, states[0]) for state in states)
    assert not torch.equal(states[0], seeded().get_state())
    assert torch.equal(torch.get_rng_state(), global_state)


def test_the_draws_follow_fastai_distributions():
    n = 20_000
    draw = Augment(**AUG_DEFAULTS).draw(n, seeded())
    fired = lambda values, neutral: (values != neutral).float().mean().item()  # noqa: E731
    for values, neutral in ((draw.angle, 0), (draw.zoom, 1), (draw.warp_x, 0), (draw.warp_y, 0),
                            (draw.change, 0.5), (draw.scale, 1)):
        assert fired(values, neutral) == pytest.approx(0.75, abs=0.015)
    # each drawn for itself: the warp's two magnitudes too, as _WarpCoord draws them
    both = ((draw.warp_x != 0) & (draw.warp_y != 0)).float().mean().item()
    assert both == pytest.approx(0.75 ** 2, abs=0.015)
    assert draw.angle.abs().max() <= 10 and draw.angle.abs().max() > 9.9
    assert draw.zoom.min() >= 1 and draw.zoom.max() <= 1.1
    assert draw.warp_x.abs().max() <= 0.2 and draw.warp_y.abs().max() <= 0.2
    assert 0.4 <= draw.change.min() and draw.change.max() <= 0.6
    log_scale = draw.scale.log()[draw.scale != 1]
    assert log_scale.abs().max() <= -math.log(0.8) + 1e-6
    assert log_scale.mean().abs() < 0.005  # log-uniform: as often 1/s as s
    assert ((draw.col_pct >= 0) & (draw.col_pct < 1)).all()


def reference_rotation(image: torch.Tensor, degrees: float) -> torch.Tensor:
    """Pixel by pixel, in plain Python: each output pixel samples the input where fastai's
    rotate_mat sends it (x across, y down, both in [-1, 1] corner centre to corner centre),
    bilinearly, mirrored at the edges."""
    theta = math.radians(degrees)
    pixels = image.view(SIDE, SIDE).tolist()
    last = SIDE - 1

    def reflect(p: float) -> float:
        p = abs(p) % (2 * last)
        return 2 * last - p if p > last else p

    out = []
    for i in range(SIDE):
        for j in range(SIDE):
            x, y = 2 * j / last - 1, 2 * i / last - 1
            xs = math.cos(theta) * x + math.sin(theta) * y
            ys = -math.sin(theta) * x + math.cos(theta) * y
            col, row = reflect((xs + 1) / 2 * last), reflect((ys + 1) / 2 * last)
            c0, r0 = min(int(col), last - 1), min(int(row), last - 1)
            fc, fr = col - c0, row - r0
            out.append((1 - fr) * ((1 - fc) * pixels[r0][c0] + fc * pixels[r0][c0 + 1])
                       + fr * ((1 - fc) * pixels[r0 + 1][c0] + fc * pixels[r0 + 1][c0 + 1]))
    return torch.tensor(out)


def test_rotation_matches_a_reference_rotation_pixel_by_pixel():
    x = digits(3)
    draw = Augment(**ROTATE).draw(len(x), seeded(2))
    assert (draw.angle.abs() > 5).all()  # a rotation that shows
    out = apply(x, draw)
    for image, rotated, degrees in zip(x, out, draw.angle.tolist()):
        torch.testing.assert_close(rotated, reference_rotation(image, degrees),
                                   rtol=0, atol=1e-5)


def test_rotation_turns_the_ink_about_the_centre_by_the_drawn_angle():
    centred, aside = blob(16), blob(16, col=CENTRE + 5, sigma=2.0)  # far from any edge
    draw = Augment(**ROTATE).draw(16, seeded(3))
    for x in (centred, aside):
        out = apply(x, draw)
        assert torch.allclose(out.sum(1), x.sum(1), rtol=0.02)  # no ink lost or made
    assert torch.allclose(ink_centre(apply(centred, draw)), torch.tensor(CENTRE), atol=0.05)
    # The spot to the right of the centre turns about it by the angle (positive: down, as
    # rotate_mat samples the output's (x, y) from R·(x, y)).
    row, col = (ink_centre(apply(aside, draw)) - CENTRE).unbind(1)
    turned = torch.rad2deg(torch.atan2(row, col))
    assert torch.allclose(turned, draw.angle, atol=1.0)
    assert torch.allclose(torch.hypot(row, col), torch.tensor(5.0), atol=0.2)


def test_zoom_never_shrinks_a_centred_blob():
    x = blob(32)
    draw = Augment(**ZOOM).draw(len(x), seeded(4))
    assert draw.zoom.min() >= 1 and draw.zoom.max() > 1.4
    out = apply(x, draw)
    # The ink grows by the zoom squared, and so does its spread (interpolating only blurs).
    torch.testing.assert_close(out.sum(1), x.sum(1) * draw.zoom ** 2, rtol=0.03, atol=0)
    assert (spread(out) >= spread(x) * draw.zoom * 0.995).all()
    assert (spread(out) > spread(x) * 1.05)[draw.zoom > 1.1].all()
    # zoom_mat's window, 1/zoom wide, centred at (1 - 1/zoom)·(2·pct - 1) of the half-width:
    # the middle of the image shows up zoom times as far the other way.
    pcts = torch.stack([draw.row_pct, draw.col_pct], dim=1)
    expected = CENTRE - (draw.zoom[:, None] - 1) * (2 * pcts - 1) * CENTRE
    torch.testing.assert_close(ink_centre(out), expected, rtol=0, atol=0.1)


def test_the_warp_takes_the_moved_corners_back_to_the_image_corners():
    draw = Augment(**WARP).draw(8, seeded(5))
    x, y = draw.warp_x, draw.warp_y
    moved = torch.stack([torch.stack([-1 - y, -1 - x], 1), torch.stack([-1 + y, 1 + x], 1),
                         torch.stack([1 + y, -1 + x], 1), torch.stack([1 - y, 1 - x], 1)], 1)
    corners = torch.tensor([[-1., -1], [-1, 1], [1, -1], [1, 1]])
    mats = warp_mat(x, y)
    homogeneous = torch.cat([moved, torch.ones(8, 4, 1)], 2) @ mats.transpose(1, 2)
    torch.testing.assert_close(homogeneous[..., :2] / homogeneous[..., 2:],
                               corners.expand(8, 4, 2), rtol=0, atol=1e-5)
    assert torch.equal(find_coeffs(corners.expand(1, 4, 2), corners.expand(1, 4, 2))[0],
                       torch.eye(3))
    x = blob(8, col=CENTRE + 4)
    out = apply(x, draw)
    assert all(not torch.equal(a, b) for a, b in zip(out, x))
    assert torch.allclose(out.sum(1), x.sum(1), rtol=0.25)  # bent, not lost


def test_brightness_alone_raises_the_mean_with_the_drawn_change():
    x = digits(1).repeat(64, 1)
    draw = Augment(**LIGHTING).draw(len(x), seeded(6))
    draw = dataclasses.replace(draw, scale=torch.ones(len(x)))  # contrast off
    out = apply(x, draw)
    means = out.mean(1)[draw.change.argsort()]
    assert (means.diff() > 0).all()
    assert ((out.mean(1) > x.mean()) == (draw.change > 0.5)).all()


def test_contrast_alone_pushes_pixels_from_or_towards_grey():
    x = digits(1).repeat(64, 1)
    draw = Augment(**LIGHTING).draw(len(x), seeded(7))
    draw = dataclasses.replace(draw, change=torch.full((len(x),), 0.5))  # brightness off
    out = apply(x, draw)
    inked = (x > 0.05) & (x < 0.95) & ((x - 0.5).abs() > 0.05)
    farther = (out - 0.5).abs() > (x - 0.5).abs()
    for image_farther, image_inked, scale in zip(farther, inked, draw.scale):
        assert (image_farther[image_inked] == (scale > 1)).all()


def test_lighting_is_brightness_then_contrast_in_logit_space():
    x = digits(64)
    draw = Augment(**LIGHTING).draw(len(x), seeded(8))
    # fastai's LightingTfm: sigmoid((logit(x) + logit(change)) * scale), in float64 here
    x64, change = x.double().clamp(1e-7, 1 - 1e-7), draw.change.double()[:, None]
    expected = torch.sigmoid((torch.log(x64 / (1 - x64)) + torch.log(change / (1 - change)))
                             * draw.scale.double()[:, None])
    torch.testing.assert_close(apply(x, draw).double(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name, value", [
    ("max_rotate", -1.0), ("max_rotate", math.inf), ("max_rotate", math.nan),
    ("max_zoom", 0.9), ("max_warp", 1.0), ("max_warp", -0.1), ("max_lighting", 1.0),
    ("max_lighting", -0.2), ("p_affine", 1.5), ("p_affine", -0.1), ("p_lighting", 2.0),
])
def test_bad_arguments_are_refused_by_name_and_range(name, value):
    with pytest.raises(ValueError, match=rf"{name} must be .*(≥|in \[)"):
        Augment(**dict(AUG_DEFAULTS, **{name: value}))


def test_only_flat_float_images_are_taken():
    augment = Augment(**AUG_DEFAULTS)
    for x in (torch.rand(4, 28, 28), torch.rand(4, 783), torch.zeros(4, 784, dtype=torch.uint8)):
        with pytest.raises(ValueError, match="N×784"):
            augment(x, seeded())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_gpu_batch_gets_the_cpu_draws():
    x = digits()
    on_cpu = Augment(**AUG_DEFAULTS)(x, seeded())
    on_gpu = Augment(**AUG_DEFAULTS)(x.cuda(), seeded())
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=0, atol=1e-4)
