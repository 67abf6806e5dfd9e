"""Reading collection images the same way everywhere: for the model and for thumbnails.

Scans and archive files come in every mode Pillow knows (palette, grey, 16-bit, CMYK, with alpha,
with an EXIF rotation), and some are broken. Everything that reads an image goes through `open_rgb`, so
the model and the thumbnail see the same upright RGB picture, and every failure becomes an
`ImageRejected` with a reason a person can act on, instead of a traceback in the middle of a long run.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Pillow's own default (about 89 megapixels) warns; twice that raises. We refuse from the warning on:
# a newspaper page scan is far below it, and a decompression bomb must not take the run's memory.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageRejected(Exception):
    """An image that cannot be used, with the reason (missing, not an image, truncated, too large)."""


def open_rgb(path: str | os.PathLike, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Open `path` as an upright RGB image; transparent parts are composited onto white.

    `draft_size` lets JPEG decoding skip detail that a downscale would throw away (much faster for
    large scans); the result is then at least that large where the source was.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageRejected("missing file" if not path.exists() else "not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise ImageRejected(f"decompression bomb: {image.width}x{image.height} pixels "
                                        f"exceeds the limit of {MAX_PIXELS}")
                if draft_size is not None and image.format == "JPEG":
                    image.draft("RGB", draft_size)
                image.load()
                return _to_upright_rgb(image)
    except ImageRejected:
        raise
    except FileNotFoundError:
        raise ImageRejected("missing file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected(f"decompression bomb: {error}") from None
    except UnidentifiedImageError:
        raise ImageRejected("not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageRejected(f"truncated or corrupt image ({error})") from None


def _to_upright_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grey: scale to 8 bit instead of clipping everything above 255 to white.
        array = np.asarray(image, dtype=np.float64)
        top = array.max() or 1.0
        image = Image.fromarray((array * (255.0 / top)).astype(np.uint8))
    elif image.mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        low, high = array.min(), array.max()
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.astype(np.uint8))
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_model_input(path: str | os.PathLike, size: tuple[int, int]) -> np.ndarray:
    """The image as a (height, width, 3) uint8 array of exactly `size` (width, height).

    Bilinear resize of the whole image, aspect not kept: that is what Inception v3's own 2015
    preprocessing did (decode, then a bilinear resize to 299x299), which the original Siamese used.
    """
    return model_input_from_image(open_rgb(path, draft_size=size), size)


def model_input_from_image(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """What load_model_input makes of a file, from an image already open (any mode; made upright RGB)."""
    if image.mode != "RGB" or image.getexif().get(0x0112, 1) != 1:
        image = _to_upright_rgb(image)
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)
