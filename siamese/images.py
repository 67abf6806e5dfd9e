"""Reading collection images the same way everywhere: for the model and for thumbnails.

Scans and archive files come in every mode Pillow knows (palette, grey, 16-bit, float, CMYK, with
alpha, with an EXIF rotation), and some are broken. Everything that reads an image goes through this
module, so the model and the thumbnail see the same upright RGB picture, and every failure becomes an
`ImageRejected` with a reason a person can act on, instead of a traceback in the middle of a long run.

Memory: a file's size says nothing of what decoding it costs (a 0.35 MB PNG of 9400x9400 RGBA pixels
is 337 MiB decoded), and an image is read by several extraction workers or upload threads at once. So:

- an image is refused before a pixel is decoded when it has more than `MAX_PIXELS` pixels (300
  megapixels, `--max-pixels`: a 600-dpi broadsheet page passes, a decompression bomb does not), or when
  decoding it would take more than `MAX_DECODE_BYTES` (its pixels as Pillow keeps them in the decoded
  mode, plus the RGB result): "too large to decode: 9400x9400 RGBA would take
  337 MiB decoded, limit 256 MiB";
- a JPEG is decoded at the size asked for (`draft_size`: libjpeg skips the detail a downscale would
  throw away; the model's input size for extraction and uploads, about the thumbnail's for thumbnails);
  other formats cannot be decoded smaller, so they are decoded whole once and then
- everything after decoding (EXIF turn, 16-bit/float scaling, compositing transparency onto white,
  the downscale) is done band by band, half a megapixel at a time, never on a full-size copy: the
  peak is the decoded image plus the (small) result. The model input is the same, to a grey level,
  as the whole-image bilinear resize the model always had.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 300_000_000
"""Images with more pixels are refused before a pixel is decoded (a decompression bomb declares
billions). Pillow's own limit, 89 megapixels, refused genuine page scans: a 600-dpi broadsheet page
(about 60 x 75 cm) is 250 megapixels. A JPEG that large is decoded at a fraction of its size for the
model and for thumbnails (libjpeg's draft mode), so it costs tens of MiB, not gigabytes
(docs/benchmarks.md); other formats are bounded by MAX_DECODE_BYTES. `--max-pixels` changes it."""
MAX_PIXELS = DEFAULT_MAX_PIXELS
# Our check replaces Pillow's (which refuses at open with a message naming no option): every image
# this project reads is opened by _read, which refuses above MAX_PIXELS from the header, before decoding.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


def set_max_pixels(pixels: int) -> None:
    """The pixel limit for this process (and the processes it forks): what --max-pixels sets."""
    global MAX_PIXELS
    if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 1:
        raise ValueError(f"max_pixels must be a positive whole number, got {pixels!r}")
    MAX_PIXELS = pixels


def parse_pixels(text: str) -> int:
    """--max-pixels' value: a whole number of pixels, or megapixels with an M (300M)."""
    value = text.strip().upper().replace("_", "").replace(",", "")
    factor = 1_000_000 if value.endswith("M") else 1
    try:
        pixels = int(float(value[:-1]) * factor) if factor > 1 else int(value)
    except ValueError:
        pixels = 0
    if pixels < 1:
        raise ValueError(f"takes a number of pixels (300000000) or of megapixels (300M), not {text!r}")
    return pixels


def too_many_pixels(width: int, height: int) -> str:
    return (f"too many pixels: {width}x{height} is {width * height / 1e6:,.0f} megapixels, over the limit of "
            f"{MAX_PIXELS / 1e6:,.0f} (--max-pixels; a decompression bomb declares billions)")

MAX_DECODE_BYTES = 256 * 1024 * 1024
"""The most memory one image may take to decode: the decoded pixels in their own mode plus the RGB
result (small for the model; the whole image for open_rgb without a draft size). Pixels alone do not
bound memory: an RGB, RGBA, CMYK or float pixel takes 4 bytes (Pillow pads RGB to 4), so MAX_PIXELS'
89 megapixels can be 341 MiB, and the conversions after decoding used to take several times that.
256 MiB lets the model read a 67-megapixel colour or float scan and any grey one under MAX_PIXELS, far
above a newspaper page, and bounds what each of a server's concurrent upload decodes
(siamese.upload.MAX_CONCURRENT_DECODES) or each extraction worker can take."""

BAND_PIXELS = 1 << 19
"""Source pixels converted at a time after decoding (half a megapixel): the working memory is a few
such bands, 10 to 20 MiB, whatever the size of the image."""

# Bytes per pixel of a decoded image as Pillow stores it; every other mode (RGB, RGBA, CMYK, LA, PA,
# YCbCr, ...) keeps a pixel in 4 bytes.
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
_MIB = 1024 * 1024


class ImageRejected(Exception):
    """An image that cannot be used, with the reason (missing, not an image, truncated, too large)."""


def decoded_bytes(mode: str, size: tuple[int, int]) -> int:
    """The memory Pillow takes for an image of `mode` and `size` (width, height) once decoded."""
    return _BYTES_PER_PIXEL.get(mode, 4) * size[0] * size[1]


def open_rgb(path: str | os.PathLike, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Open `path` as an upright RGB image; transparent parts are composited onto white.

    `draft_size` (width, height): the image may come back smaller, but at least that large where the
    source was: a JPEG is decoded at a reduced scale (libjpeg's draft mode), any other image is
    reduced by a whole factor (box filter) band by band after decoding. Without it, full size.
    """
    def finish(image: Image.Image, orientation: int) -> Image.Image:
        factor = 1
        if draft_size is not None:
            width, height = _upright_size(image.size, orientation)
            factor = max(1, min(width // max(1, draft_size[0]), height // max(1, draft_size[1])))
        return _upright_rgb(image, orientation, factor=factor)

    def result_bytes(size: tuple[int, int]) -> int:
        if draft_size is None:
            return 4 * size[0] * size[1]
        factor = max(1, min(size[0] // max(1, draft_size[0]), size[1] // max(1, draft_size[1]),
                            size[1] // max(1, draft_size[0]), size[0] // max(1, draft_size[1])))
        return 4 * math.ceil(size[0] / factor) * math.ceil(size[1] / factor)

    return _read(path, draft_size, result_bytes, finish)[0]


INPUT_MODES = ("colour", "grey", "scan")
"""How an image is shown to the model, recorded in the vector store (every vector of a store, and every
query against it, sees the same): colour, as it is; grey, its luminance with the levels stretched (the
darkest and lightest 1 % clipped), so that another paper tone, ink, scanner or a grey or sepia reprint
looks the same; scan, grey and then smoothed to DESCREEN_SIZE pixels and back, which dissolves
halftone screens and dither and evens out the scans' resolutions. docs/scan-copies.md measures them."""
DESCREEN_SIZE = 128


def check_input_mode(input_mode: str) -> str:
    if input_mode not in INPUT_MODES:
        raise ValueError(f"input mode must be one of {', '.join(map(repr, INPUT_MODES))}, got {input_mode!r}")
    return input_mode


def normalise_model_input(pixels: np.ndarray, input_mode: str = "colour") -> np.ndarray:
    """A (height, width, 3) uint8 model input as `input_mode` shows it (INPUT_MODES)."""
    if check_input_mode(input_mode) == "colour":
        return pixels
    grey = ImageOps.autocontrast(Image.fromarray(pixels, "RGB").convert("L"), cutoff=1)
    if input_mode == "scan":
        width, height = grey.size
        scale = DESCREEN_SIZE / max(width, height)
        if scale < 1:
            small = grey.resize((max(1, round(width * scale)), max(1, round(height * scale))),
                                Image.Resampling.BOX)
            grey = small.resize((width, height), Image.Resampling.BILINEAR)
    return np.repeat(np.asarray(grey, dtype=np.uint8)[:, :, None], 3, axis=2)


def load_model_input(path: str | os.PathLike, size: tuple[int, int],
                     input_mode: str = "colour") -> np.ndarray:
    """The image as a (height, width, 3) uint8 array of exactly `size` (width, height).

    Bilinear resize of the whole image, aspect not kept: that is what Inception v3's own 2015
    preprocessing did (decode, then a bilinear resize to 299x299), which the original Siamese used.
    Then normalised as `input_mode` says (INPUT_MODES).
    """
    return load_model_input_with_size(path, size, input_mode)[0]


def model_input_or_reason(path: str | os.PathLike, size: tuple[int, int],
                          input_mode: str = "colour") -> np.ndarray | str:
    """load_model_input's array, or why the image cannot be used: what an extraction lists in rejects.csv
    before it goes on. One place for the reasons, so that extraction in one process and on Ray
    (siamese/ray_extract.py) reject the same images alike."""
    try:
        return load_model_input(path, size, input_mode)
    except ImageRejected as error:
        return str(error)
    except MemoryError:
        return "image too large to decode in memory"


def load_model_input_with_size(path: str | os.PathLike, size: tuple[int, int], input_mode: str = "colour"
                               ) -> tuple[np.ndarray, tuple[int, int]]:
    """load_model_input's array, and the upright (width, height) of the file itself, from its header
    (not the size it was decoded at: a JPEG is decoded near `size`)."""
    check_input_mode(input_mode)

    def finish(image: Image.Image, orientation: int) -> np.ndarray:
        pixels = np.asarray(_upright_rgb(image, orientation, size=size), dtype=np.uint8)
        return normalise_model_input(pixels, input_mode)

    return _read(path, size, lambda _: 4 * size[0] * size[1], finish)


def model_input_from_image(image: Image.Image, size: tuple[int, int],
                           input_mode: str = "colour") -> np.ndarray:
    """What load_model_input makes of a file, from an image already open (any mode; made upright RGB)."""
    orientation = image.getexif().get(0x0112, 1)
    if image.mode == "RGB" and orientation == 1 and image.size == size:
        return normalise_model_input(np.asarray(image, dtype=np.uint8), input_mode)
    image.load()
    return normalise_model_input(np.asarray(_upright_rgb(image, orientation, size=size), dtype=np.uint8),
                                 input_mode)


def _read(path: str | os.PathLike, draft_size: tuple[int, int] | None,
          result_bytes: Callable[[tuple[int, int]], int],
          finish: Callable[[Image.Image, int], object]) -> tuple:
    """(finish(decoded image, EXIF orientation), upright size of the file): open, refuse, decode."""
    path = Path(path)
    if not path.is_file():
        raise ImageRejected("missing file" if not path.exists() else "not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise ImageRejected(too_many_pixels(image.width, image.height))
                original_size = image.size
                if draft_size is not None and image.format == "JPEG":
                    image.draft("RGB", draft_size)
                _refuse_if_too_large(image, result_bytes(image.size))
                image.load()
                orientation = image.getexif().get(0x0112, 1)  # after load: a PNG's EXIF may follow its pixels
                orientation = orientation if orientation in _TRANSPOSE else 1
                return finish(image, orientation), _upright_size(original_size, orientation)
    except ImageRejected:
        raise
    except FileNotFoundError:
        raise ImageRejected("missing file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:  # (Pillow's, if set)
        raise ImageRejected(f"too many pixels ({error}; --max-pixels)") from None
    except UnidentifiedImageError:
        raise ImageRejected("not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageRejected(f"truncated or corrupt image ({error})") from None


def _refuse_if_too_large(image: Image.Image, result: int) -> None:
    """ImageRejected when decoding `image` (not loaded yet) into a result of `result` bytes would take
    more than MAX_DECODE_BYTES; the RGB result is named in the reason when it counts (16 MiB or more)."""
    decoded = decoded_bytes(image.mode, image.size)
    if decoded + result <= MAX_DECODE_BYTES:
        return
    needs = f"{decoded / _MIB:.0f} MiB decoded"
    if result >= 16 * _MIB:
        needs += f" and {result / _MIB:.0f} MiB as RGB"
    raise ImageRejected(f"too large to decode: {image.width}x{image.height} {image.mode} would take "
                        f"{needs}, limit {MAX_DECODE_BYTES / _MIB:.0f} MiB")


def _upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def _rgb_converter(image: Image.Image) -> Callable[[Image.Image], Image.Image]:
    """A function making a band of `image` RGB as the whole image would be made RGB.

    16/32-bit grey is scaled to 8 bit by the image's maximum (instead of clipping everything above 255
    to white), float by its range: both found first in one pass over bands, then applied per band in
    float64, the same arithmetic as on the whole image. Transparency is composited onto white.
    """
    mode = image.mode
    if mode in _WIDE_GREY or mode == "F":
        def floats(band: Image.Image) -> np.ndarray:  # one float64 copy of the band, worked on in place
            array = np.array(band, dtype=np.float64)
            return np.nan_to_num(array, copy=False) if mode == "F" else array

        low, high = math.inf, -math.inf
        for band in _source_bands(image):
            array = floats(band)
            low, high = min(low, float(array.min())), max(high, float(array.max()))
        if mode == "F":
            def scale(array: np.ndarray) -> np.ndarray:
                if high > low:
                    array -= low
                    array *= 255.0 / (high - low)
                    return array
                return np.zeros_like(array)
        else:
            top = high or 1.0

            def scale(array: np.ndarray) -> np.ndarray:
                array *= 255.0 / top
                return array

        def grey(band: Image.Image) -> Image.Image:
            return Image.fromarray(scale(floats(band)).astype(np.uint8)).convert("RGB")
        return grey
    if mode in _ALPHA_MODES or "transparency" in image.info:
        def composite(band: Image.Image) -> Image.Image:
            rgba = band.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return composite
    return lambda band: band.convert("RGB")


def _source_bands(image: Image.Image):
    rows = max(1, BAND_PIXELS // max(1, image.width))
    for top in range(0, image.height, rows):
        yield image.crop((0, top, image.width, min(image.height, top + rows)))


def _upright_rgb(image: Image.Image, orientation: int, size: tuple[int, int] | None = None,
                 factor: int = 1) -> Image.Image:
    """The decoded `image`, turned upright and made RGB, band by band (never a full-size copy but
    the result): resized to `size` (bilinear, as one resize of the whole image would be), else
    reduced by `factor` (box filter), else at full size."""
    orientation = orientation if orientation in _TRANSPOSE else 1
    width, height = image.size
    upright_width, upright_height = _upright_size(image.size, orientation)
    convert = _rgb_converter(image)
    transpose = _TRANSPOSE.get(orientation)

    rows_per_band = max(1, BAND_PIXELS // upright_width)

    def upright_rows(top: int, bottom: int) -> Image.Image:
        """Rows top..bottom of the upright RGB image, all its width, converted rows_per_band at a time
        (the conversion's float and RGBA copies stay a band's size, whatever the rows asked for)."""
        band = Image.new("RGB", (upright_width, bottom - top)) if bottom - top > rows_per_band else None
        for first in range(top, bottom, rows_per_band):
            last = min(bottom, first + rows_per_band)
            if orientation in (1, 2):
                box = (0, first, width, last)
            elif orientation in (3, 4):
                box = (0, height - last, width, height - first)
            elif orientation in (5, 6):
                box = (first, 0, last, height)
            else:  # 7, 8: upright row y is source column width - 1 - y
                box = (width - last, 0, width - first, height)
            piece = image.crop(box)
            piece = convert(piece if transpose is None else piece.transpose(transpose))
            if band is None:
                return piece
            band.paste(piece, (0, first - top))
        return band

    if size is not None and size != (upright_width, upright_height):
        output = Image.new("RGB", size)
        output_width, output_height = size
        scale = upright_height / output_height
        # Bilinear support is one source pixel, times the scale when shrinking; one more for rounding.
        margin = math.ceil(max(scale, 1.0)) + 1 if output_height != upright_height else 0
        output_rows = max(4, int(rows_per_band / max(scale, 1.0)))  # 4: the margins stay a small part
        for start in range(0, output_height, output_rows):
            end = min(output_height, start + output_rows)
            first, last = start * scale, (upright_height if end == output_height else end * scale)
            top = max(0, math.floor(first) - margin)
            bottom = min(upright_height, math.ceil(last) + margin)
            band = upright_rows(top, bottom)
            output.paste(band.resize((output_width, end - start), Image.Resampling.BILINEAR,
                                     box=(0, first - top, upright_width, last - top)), (0, start))
        return output
    output = Image.new("RGB", (math.ceil(upright_width / factor), math.ceil(upright_height / factor)))
    rows = max(factor, rows_per_band // factor * factor)
    for top in range(0, upright_height, rows):
        band = upright_rows(top, min(upright_height, top + rows))
        output.paste(band if factor == 1 else band.reduce(factor), (0, top // factor))
    return output
