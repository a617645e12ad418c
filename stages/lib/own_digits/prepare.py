"""A user's own picture of a digit, turned into a 28×28 image the way MNIST's were made.

MNIST's digits are light on a black background, cropped to the ink, scaled to fit a
20×20 box with their aspect ratio kept, and placed in a 28×28 field so that their centre
of mass (pixel-index weighted) falls on row 14, column 14. A photo or drawing goes through
the same steps; a 28×28 image on pure black is MNIST-format already and passes through
unchanged (on pure white, it is only inverted).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..infra.errors import UserError
from ..infra.files import regular_file

SIZE = 28   # the MNIST field
BOX = 20    # the box MNIST fits each digit into
CENTRE = 14
# Ink weaker than this share of the darkest stroke is background: paper texture, JPEG noise.
MIN_INK = 0.1
STRAY_INK = 0.005  # share of the ink that may lie outside the digit's box (dust, specks)
MAX_PIXELS = 1024  # larger photos are shrunk first: a 20×20 result needs no more
# The most pixels decoded for one image (a 4096×4096 PNG, a 64 MB RGBA buffer at most), far
# below Pillow's decompression-bomb limit (89 million): one upload cannot take a gigabyte.
# A JPEG is decoded at a reduced scale (its DCT's 1/2 to 1/8) first, so a phone photo of any
# size fits.
MAX_DECODED = 4096 * 4096
# Grey levels between the visible pixels and the colour stored under transparent ones, past
# which that colour is the paper (the ink stands out from it), not the strokes' own.
PAPER_CONTRAST = 64


class TooLarge(UserError):
    """An image with more pixels than is safe to decode (a server answers 413)."""


# The formats read: pictures people take, draw and save. Not the rest of what Pillow opens
# (EPS runs Ghostscript; ICO and ICNS decode their largest image before its size is known).
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")  # JPEG opens MPO (a phone's) too
# The server's: TIFF's decoder (libtiff) writes its warnings straight to stderr, a line per
# damaged file, which would let clients grow the server's log without bound.
SERVED_FORMATS = tuple(f for f in FORMATS if f != "TIFF")


def read_digit(path: str | Path, data: bytes | None = None,
               formats: tuple[str, ...] = FORMATS) -> np.ndarray:
    """The image at `path` (or, given `data`, those bytes, named `path`) as a 28×28 uint8
    MNIST-style digit; UserError naming it when it is missing, not an image, or blank."""
    return prepare_digit(read_grey(path, data, formats), name=str(path))


def read_grey(path: str | Path, data: bytes | None = None,
              formats: tuple[str, ...] = FORMATS) -> np.ndarray:
    """Grey levels 0-255 (float) of the image file (or of `data`), upright as the camera
    meant it."""
    import io
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        if data is None:
            regular_file(path, "an image")
        with warnings.catch_warnings():
            # Pillow warns past MAX_IMAGE_PIXELS and refuses at twice that: both are refused
            # here, from the size in the header, before a pixel is decoded.
            warnings.simplefilter("ignore")  # a plugin's remark on a damaged file: not news
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path if data is None else io.BytesIO(data),
                            formats=formats) as image:
                decoded_size(image, path)
                image = ImageOps.exif_transpose(image)
                grey = as_grey(image)
                grey.thumbnail((MAX_PIXELS, MAX_PIXELS))
                return np.asarray(grey, dtype=np.float64)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not an image") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise TooLarge(f"{path}: too many pixels to read (over {Image.MAX_IMAGE_PIXELS:,}, "
                       f"Pillow's decompression-bomb limit; at most {MAX_DECODED:,} are "
                       f"decoded, e.g. 4096×4096); shrink the image first") from None
    except UnidentifiedImageError:
        raise UserError(f"{path}: not an image Pillow can read as "
                        f"{', '.join(formats[:-1])} or {formats[-1]}") from None
    except (OSError, ValueError, SyntaxError) as err:  # truncated or corrupt image data
        raise UserError(f"{path}: cannot read the image ({err})") from None


def decoded_size(image, path: str | Path) -> tuple[int, int]:
    """The size `image` (opened, not yet decoded) will decode at; TooLarge past MAX_DECODED
    pixels, before a pixel is decoded. A JPEG is set to decode reduced by its DCT's 1/2, 1/4
    or 1/8: as far as leaves its short side MAX_PIXELS or more, and further while it would
    be over MAX_DECODED."""
    if image.format in ("JPEG", "MPO"):
        width, height = image.size
        scale = next((s for s in (8, 4, 2) if min(width, height) // s >= MAX_PIXELS), 1)
        while scale < 8 and (width // scale) * (height // scale) > MAX_DECODED:
            scale *= 2
        if scale > 1:
            image.draft(None, (width // scale, height // scale))
    width, height = image.size
    if width * height > MAX_DECODED:
        raise TooLarge(f"{path}: too many pixels to read ({width}×{height}; at most "
                       f"{MAX_DECODED:,}, e.g. 4096×4096); shrink the image first")
    return width, height


# Pillow's modes for more than 8 bits of grey: 16-bit PNGs and TIFFs open as one of these.
DEEP_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def as_grey(image):
    """The image as grey levels 0-255: 8-bit modes (colour, palette, transparency) through
    flatten_alpha as an "L" image, and 16-bit grey scaled down to a float ("F") image with
    every level it has kept (convert("L") would clip it to 8 bits: a 16-bit scan would be one
    flat shade)."""
    from PIL import Image

    if image.mode in DEEP_GREY:
        # 65535 -> 255; a 32-bit image's levels past 16 bits are clipped, not wrapped
        levels = np.clip(np.asarray(image.convert("I"), dtype=np.float64), 0, 65535) / 257
        return Image.fromarray(levels.astype(np.float32), mode="F")
    if image.mode == "F":  # a float TIFF: 0-1 (as scientific images are) or 0-255
        levels = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        scale = 255.0 if np.abs(levels).max() <= 1.0 else 1.0
        return Image.fromarray(np.clip(levels * scale, 0, 255).astype(np.float32), mode="F")
    return flatten_alpha(image).convert("L")


def flatten_alpha(image):
    """A transparent image laid on the background it was drawn on.

    Two kinds of transparency reach here. A picture whose paper was made transparent (an
    alpha of 0 on white, or a palette or key colour, as some tools export) still stores
    the paper's colour under the transparency: it is laid back on that colour. A drawing app's
    strokes on a transparent background store one colour everywhere and draw the digit in
    the alpha alone: it is laid on the opposite of the strokes' shade (on white, white
    strokes would vanish).
    """
    from PIL import Image

    if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
        return image
    rgba = image.convert("RGBA")  # a palette's or key colour's transparency becomes alpha
    alpha = np.asarray(rgba.getchannel("A"))
    if alpha.min() == 255:
        return rgba.convert("RGB")
    stored = np.asarray(rgba.convert("RGB").convert("L"), dtype=np.float64)  # alpha ignored
    hidden = float(np.median(stored[alpha == alpha.min()]))  # under the clearest pixels
    visible = stored[alpha > max(127, int(alpha.min()))]
    if visible.size and np.percentile(np.abs(visible - hidden), 90) > PAPER_CONTRAST:
        shade = round(hidden)  # what is seen differs from what is hidden: hidden is paper
    else:
        shade = 255 if visible.size == 0 or visible.mean() < 128 else 0
    background = Image.new("RGBA", rgba.size, (shade, shade, shade, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def prepare_digit(grey: np.ndarray, name: str = "image") -> np.ndarray:
    """Grey levels (H×W, 0-255) -> 28×28 uint8, light digit on black, as MNIST."""
    if grey.size == 0:
        raise UserError(f"{name}: the image is empty (0 pixels)")
    mnist = mnist_format(grey)
    if mnist is not None:
        return mnist
    ink = ink_levels(grey)
    if ink is None:
        why = ("the image is one flat shade" if grey.max() == grey.min() else
               "nothing stands out from the background's own variation")
        raise UserError(f"{name}: no digit found ({why})")
    return centre_by_mass(fit_in_box(crop_to_ink(ink)))


def mnist_format(grey: np.ndarray) -> np.ndarray | None:
    """A 28×28 image on pure black (or pure white, inverted) as it is, every grey level
    kept: MNIST's own images, or an MNIST image saved dark on light."""
    if grey.shape != (SIZE, SIZE) or grey.max() == grey.min():
        return None
    background = np.median(grey[border_mask(grey.shape)])
    if background == 0:
        return np.rint(grey).astype(np.uint8)
    if background == 255:
        return np.rint(255 - grey).astype(np.uint8)
    return None


def border_mask(shape: tuple[int, int]) -> np.ndarray:
    """True on the outermost rows and columns of an image of this shape."""
    mask = np.zeros(shape, dtype=bool)
    mask[[0, -1]], mask[:, [0, -1]] = True, True
    return mask


def paper(grey: np.ndarray) -> tuple[np.ndarray, float]:
    """The background's shade at every pixel and how much it varies by itself.

    A plane fitted to the border pixels, so light falling across a photographed page from
    one side is background, not ink; border pixels far off the first fit (a stroke running
    off the edge) are left out of the second.
    """
    rows, cols = np.indices(grey.shape)
    on_border = border_mask(grey.shape)
    design = np.stack([np.ones(on_border.sum()), rows[on_border], cols[on_border]], axis=1)
    values = grey[on_border]
    coef = np.linalg.lstsq(design, values, rcond=None)[0]
    residual = np.abs(values - design @ coef)
    kept = residual <= 3 * np.median(residual) + 1
    coef = np.linalg.lstsq(design[kept], values[kept], rcond=None)[0]
    noise = float(np.percentile(np.abs(values[kept] - design[kept] @ coef), 99))
    return coef[0] + coef[1] * rows + coef[2] * cols, noise


def ink_levels(grey: np.ndarray) -> np.ndarray | None:
    """How much ink each pixel holds, 0 (background) to 1, or None for a blank image.

    The digit is whatever differs most from the paper in one direction, so dark ink on
    light paper and light on dark both work; differences within the paper's own variation
    (texture, JPEG noise) or under a tenth of the strongest stroke are background.
    """
    background, noise = paper(grey)
    difference = grey - background
    ink = -difference if -difference.min() > difference.max() else difference
    peak = float(ink.max())
    if peak <= 3 * noise or peak < 1:
        return None
    ink = ink / peak
    ink[ink < max(MIN_INK, 3 * noise / peak)] = 0
    return ink


def crop_to_ink(ink: np.ndarray) -> np.ndarray:
    """The box holding the digit: rows and columns from either edge are dropped while
    together they hold under 0.5% of the ink, so a speck of dust does not widen it."""
    def span(profile: np.ndarray) -> slice:
        share = np.cumsum(profile) / profile.sum()
        return slice(int(np.searchsorted(share, STRAY_INK, side="right")),
                     int(np.searchsorted(share, 1 - STRAY_INK, side="left")) + 1)

    return ink[span(ink.sum(axis=1)), span(ink.sum(axis=0))]


def fit_in_box(ink: np.ndarray) -> np.ndarray:
    """Scaled (antialiased) so the longer side is 20 pixels, the aspect ratio kept."""
    from PIL import Image

    height, width = ink.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(ink.astype(np.float32), mode="F").resize(
        size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized, dtype=np.float64), 0, 1)


def centre_by_mass(patch: np.ndarray) -> np.ndarray:
    """The patch in a 28×28 field, shifted by whole pixels so its centre of mass is at
    (14, 14) as in MNIST (kept inside the field)."""
    height, width = patch.shape
    mass = patch.sum()
    row = (patch.sum(axis=1) @ np.arange(height)) / mass
    col = (patch.sum(axis=0) @ np.arange(width)) / mass
    top = min(max(round(CENTRE - row), 0), SIZE - height)
    left = min(max(round(CENTRE - col), 0), SIZE - width)
    field = np.zeros((SIZE, SIZE))
    field[top:top + height, left:left + width] = patch
    return np.rint(field * 255).astype(np.uint8)
