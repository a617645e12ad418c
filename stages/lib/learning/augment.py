"""Data augmentation, fastai's `aug_transforms()` (fastai.vision.augment) for MNIST digits,
without its flips: a batch-wise transform that the training stage runs on each training
batch, never on validation.

Each image gets one coordinate transform, fastai's Rotate, Zoom and Warp composed as
`setup_aug_tfms` composes them (`rotate_mat @ zoom_mat`, then `_WarpCoord`'s perspective),
sampled once by `grid_sample` with bilinear interpolation and reflection padding; then
fastai's Brightness and Contrast, composed in logit space. Each transform fires per image
with its probability, as fastai draws them (`_draw_mask`).

Seeded: every random number comes from the caller's CPU `torch.Generator`, the same count
in the same order for every batch of a size whatever fires: the same seed gives the same
augmentation bit for bit, the same draws whether the batch is on the CPU or a GPU, and no
other generator (the shuffling's, torch's global one) moves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SIDE = 28  # MNIST's images, N×784 flat rows

# fastai's aug_transforms defaults; its flips are left out: a flipped digit is another shape
# (a mirrored 2 is no 2), where fastai's defaults suit photos.
AUG_DEFAULTS = {"max_rotate": 10.0, "max_zoom": 1.1, "max_warp": 0.2, "max_lighting": 0.2,
                "p_affine": 0.75, "p_lighting": 0.75}

# Rows of one batch's draws, in fastai's order: Rotate, Zoom and Warp's before_call, then
# Brightness and Contrast's. fastai draws no mask for the zoom's centre (p=1).
_DRAWS = ("angle", "angle_on", "zoom", "zoom_on", "col_pct", "row_pct",
          "warp_x", "warp_x_on", "warp_y", "warp_y_on", "change", "change_on",
          "scale", "scale_on")


@dataclass(frozen=True)
class Draw:
    """One batch's drawn parameters, per image (CPU tensors of length N), each at its
    neutral value where its transform did not fire."""

    angle: torch.Tensor    # degrees (0)
    zoom: torch.Tensor     # ≥ 1 (1)
    col_pct: torch.Tensor  # where the zoom centres, in [0, 1] across the image
    row_pct: torch.Tensor
    warp_x: torch.Tensor   # _WarpCoord's magnitudes (0)
    warp_y: torch.Tensor
    change: torch.Tensor   # Brightness (0.5)
    scale: torch.Tensor    # Contrast (1)


class Augment:
    """fastai's aug_transforms() without flips, on a batch of flat MNIST images: rotation
    uniform in ±max_rotate degrees, zoom uniform in [1, max_zoom] about a random centre,
    perspective warp with magnitudes uniform in ±max_warp, each with probability p_affine;
    brightness and contrast of max_lighting, each with probability p_lighting.

    `Augment(**AUG_DEFAULTS)(x, generator)` returns a new batch: same shape, dtype and
    device as `x`, values in [0, 1]; `x` itself is left as it was."""

    def __init__(self, max_rotate: float, max_zoom: float, max_warp: float,
                 max_lighting: float, p_affine: float, p_lighting: float):
        _check("max_rotate", max_rotate, 0, math.inf, "finite and ≥ 0", below_high=True)
        _check("max_zoom", max_zoom, 1, math.inf, "finite and ≥ 1", below_high=True)
        _check("max_warp", max_warp, 0, 1, "in [0, 1)", below_high=True)
        _check("max_lighting", max_lighting, 0, 1, "in [0, 1)", below_high=True)
        _check("p_affine", p_affine, 0, 1, "in [0, 1]")
        _check("p_lighting", p_lighting, 0, 1, "in [0, 1]")
        self.max_rotate, self.max_zoom, self.max_warp = max_rotate, max_zoom, max_warp
        self.max_lighting, self.p_affine, self.p_lighting = max_lighting, p_affine, p_lighting

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return apply(x, self.draw(len(x), generator))

    def draw(self, n: int, generator: torch.Generator) -> Draw:
        """The parameters for a batch of `n`, from `generator` alone: all of them drawn,
        then masked, so the generator moves as far whatever the probabilities."""
        u = dict(zip(_DRAWS, torch.rand(len(_DRAWS), n, generator=generator,
                                        dtype=torch.float32)))

        def drawn(name: str, low: float, high: float, p: float, neutral: float) -> torch.Tensor:
            values = low + (high - low) * u[name]
            fires = u[f"{name}_on"] < p  # fastai's bernoulli_(p): p=0 never, p=1 always
            return torch.where(fires, values, torch.full_like(values, neutral))

        rotate, warp, p_affine = self.max_rotate, self.max_warp, self.p_affine
        lighting, p_lighting = self.max_lighting, self.p_lighting
        log_contrast = -math.log(1 - lighting)  # log-uniform: 1/s as likely as s
        return Draw(angle=drawn("angle", -rotate, rotate, p_affine, 0),
                    zoom=drawn("zoom", 1, self.max_zoom, p_affine, 1),
                    col_pct=u["col_pct"], row_pct=u["row_pct"],
                    warp_x=drawn("warp_x", -warp, warp, p_affine, 0),
                    warp_y=drawn("warp_y", -warp, warp, p_affine, 0),
                    change=drawn("change", 0.5 * (1 - lighting), 0.5 * (1 + lighting),
                                 p_lighting, 0.5),
                    # exp(neutral 0) is exactly 1
                    scale=drawn("scale", -log_contrast, log_contrast, p_lighting, 0).exp())


def apply(x: torch.Tensor, draw: Draw) -> torch.Tensor:
    """`x` (N×784 in [0, 1]) moved, then lit, as `draw` says: a new tensor. Images that no
    transform of a kind fires on come through that kind exactly as they were."""
    _check_batch(x)
    return lighting(resample(x, draw), draw)


def resample(x: torch.Tensor, draw: Draw) -> torch.Tensor:
    """Each image sampled where its coordinate transform sends the output pixels: one
    grid_sample for the batch, as fastai's AffineCoordTfm composes its transforms into one.

    fastai resamples every image, its identity too; here the images no transform moves
    keep their pixels exactly (an identity grid's bilinear sampling is off by rounding)."""
    moved = (draw.angle != 0) | (draw.zoom != 1) | (draw.warp_x != 0) | (draw.warp_y != 0)
    if not moved.any():  # a CPU tensor: no wait on the GPU
        return x.clone()
    mats = homographies(draw).to(device=x.device, dtype=x.dtype)
    grid = _base_grid(x) @ mats.transpose(1, 2)  # N×784×3: homogeneous source points
    grid = (grid[..., :2] / grid[..., 2:]).view(len(x), SIDE, SIDE, 2)
    images = x.view(len(x), 1, SIDE, SIDE)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection",
                        align_corners=True).view(len(x), -1)
    # Bilinear weights sum to 1 only up to rounding: 1.0000001 is no pixel value.
    out = out.clamp_(0, 1)
    return torch.where(moved.to(x.device)[:, None], out, x)


def homographies(draw: Draw) -> torch.Tensor:
    """N×3×3, each image's map from output to source coordinates in grid_sample's [-1, 1]
    (x across, y down): fastai's `_WarpCoord` perspective applied after `rotate_mat @
    zoom_mat`, one matrix since both are linear in homogeneous coordinates."""
    affine = rotate_mat(draw.angle) @ zoom_mat(draw.zoom, draw.col_pct, draw.row_pct)
    perspective = warp_mat(draw.warp_x, draw.warp_y)
    mats = perspective @ affine
    # From max_warp ≈ 0.37 a warp's horizon, where its divisor is 0, can cross the image: the
    # pixels past it would sample through infinity, mirrored. fastai samples them anyway (and
    # leaves the whole batch unwarped only where a divisor is exactly 0); here just those
    # images go unwarped, keeping their rotation and zoom. Never at the default 0.2. The
    # divisor is linear in the output coordinates: its least is at a corner.
    corners = torch.tensor([[-1., -1, 1], [-1, 1, 1], [1, -1, 1], [1, 1, 1]])
    past_horizon = (mats[:, 2] @ corners.T).amin(dim=1) <= 1e-3
    return torch.where(past_horizon[:, None, None], affine, mats)


def rotate_mat(degrees: torch.Tensor) -> torch.Tensor:
    """fastai's rotate_mat, for the angles drawn."""
    theta = degrees * (math.pi / 180)
    cos, sin, zero = theta.cos(), theta.sin(), torch.zeros_like(theta)
    return _affine(cos, sin, zero, -sin, cos, zero)


def zoom_mat(zoom: torch.Tensor, col_pct: torch.Tensor, row_pct: torch.Tensor) -> torch.Tensor:
    """fastai's zoom_mat: sampling a 1/zoom wide window whose centre moves, as the zoom
    grows, towards the point (col_pct, row_pct) of the image, the window kept inside."""
    s = 1 / zoom
    zero = torch.zeros_like(s)
    return _affine(s, zero, (1 - s) * (2 * col_pct - 1), zero, s, (1 - s) * (2 * row_pct - 1))


def warp_mat(warp_x: torch.Tensor, warp_y: torch.Tensor) -> torch.Tensor:
    """fastai's _WarpCoord: the perspective that takes the corners moved by (warp_x,
    warp_y) back to the image's corners, as find_coeffs(orig_pts, targ_pts) solves it.
    The identity, exactly, where neither magnitude was drawn."""
    n = len(warp_x)
    orig = torch.tensor([[-1., -1], [-1, 1], [1, -1], [1, 1]]).expand(n, 4, 2)
    x, y = warp_x, warp_y
    targ = torch.stack([torch.stack([-1 - y, -1 - x], dim=1), torch.stack([-1 + y, 1 + x], dim=1),
                        torch.stack([1 + y, -1 + x], dim=1), torch.stack([1 - y, 1 - x], dim=1)],
                       dim=1)
    mats = find_coeffs(orig, targ)
    unwarped = (warp_x == 0) & (warp_y == 0)
    return torch.where(unwarped[:, None, None], torch.eye(3).expand(n, 3, 3), mats)


def find_coeffs(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """fastai's find_coeffs: the N×3×3 perspective that maps the 4 points `p2` (N×4×2) to
    `p1`, from the 8 linear equations its 8 coefficients solve."""
    one, zero = torch.ones_like(p1[:, 0, 0]), torch.zeros_like(p1[:, 0, 0])
    rows = []
    for i in range(4):
        (x1, y1), (x2, y2) = p1[:, i].unbind(1), p2[:, i].unbind(1)
        rows.append(torch.stack([x2, y2, one, zero, zero, zero, -x1 * x2, -x1 * y2], dim=1))
        rows.append(torch.stack([zero, zero, zero, x2, y2, one, -y1 * x2, -y1 * y2], dim=1))
    coeffs = torch.linalg.solve(torch.stack(rows, dim=1), p1.reshape(-1, 8))
    return torch.cat([coeffs, one[:, None]], dim=1).view(-1, 3, 3)


def lighting(x: torch.Tensor, draw: Draw) -> torch.Tensor:
    """fastai's Brightness then Contrast, composed in logit space as its LightingTfm does:
    sigmoid((logit(x) + logit(change)) * scale).

    fastai takes every image through logit and sigmoid, those left alone too (a 0 pixel
    comes back 1e-7); here they keep their pixels exactly (`x` itself when none is lit)."""
    lit = (draw.change != 0.5) | (draw.scale != 1)
    if not lit.any():
        return x
    change = logit(draw.change).to(device=x.device, dtype=x.dtype)[:, None]
    scale = draw.scale.to(device=x.device, dtype=x.dtype)[:, None]
    return torch.where(lit.to(x.device)[:, None], torch.sigmoid((logit(x) + change) * scale), x)


def logit(x: torch.Tensor) -> torch.Tensor:
    """fastai's logit: clamped so that 0 and 1 stay finite."""
    x = x.clamp(1e-7, 1 - 1e-7)
    return -(1 / x - 1).log()


def _base_grid(x: torch.Tensor) -> torch.Tensor:
    """784×3, each output pixel's (x, y, 1) in [-1, 1], the corners' centres at ±1: what
    F.affine_grid builds with align_corners=True, as fastai samples."""
    steps = torch.linspace(-1, 1, SIDE, device=x.device, dtype=x.dtype)
    ys, xs = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).view(-1, 3)


def _affine(a, b, c, d, e, f) -> torch.Tensor:
    """N×3×3 from the first two rows' entries, fastai's affine_mat."""
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([a, b, c, d, e, f, zero, zero, one], dim=1).view(-1, 3, 3)


def _check(name: str, value: float, low: float, high: float, allowed: str,
           below_high: bool = False) -> None:
    within = low <= value < high if below_high else low <= value <= high
    if not within:  # NaN included
        raise ValueError(f"{name} must be {allowed}, not {value!r}")


def _check_batch(x: torch.Tensor) -> None:
    if x.ndim != 2 or x.shape[1] != SIDE * SIDE or not x.is_floating_point():
        raise ValueError(f"augmenting takes float N×{SIDE * SIDE} images, not "
                         f"{x.dtype} {tuple(x.shape)}")
