from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from siamese import images
from siamese.images import ImageRejected, load_model_input, open_rgb


def test_transparent_palette_image_is_composited_onto_white(tmp_path):
    image = Image.new("P", (10, 10), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 5, 10))  # left half red, right half palette index 0 (transparent)
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    rgb = np.asarray(open_rgb(tmp_path / "p.png"))
    assert rgb[5, 2].tolist() == [255, 0, 0]
    assert rgb[5, 8].tolist() == [255, 255, 255]


def test_half_transparent_rgba_blends_with_white(tmp_path):
    Image.new("RGBA", (4, 4), (0, 0, 0, 128)).save(tmp_path / "a.png")
    value = np.asarray(open_rgb(tmp_path / "a.png"))[0, 0]
    assert 120 <= value[0] <= 135 and value[0] == value[1] == value[2]


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "r.jpg", exif=exif)
    assert open_rgb(tmp_path / "r.jpg").size == (20, 40)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    array = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    Image.fromarray(array).save(tmp_path / "g16.png")
    rgb = np.asarray(open_rgb(tmp_path / "g16.png"))
    assert rgb[1, 1].tolist() == [255, 255, 255]
    assert 100 < rgb[1, 0, 0] < 150  # 2000/4000 of white, where clipping would give 255


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    rgb = open_rgb(tmp_path / "c.jpg")
    assert rgb.mode == "RGB"
    assert np.asarray(rgb)[4, 4, 0] > 200 and np.asarray(rgb)[4, 4, 1] < 60


def test_model_input_is_exactly_the_size_asked(tmp_path):
    Image.new("L", (123, 45), 7).save(tmp_path / "g.png")
    pixels = load_model_input(tmp_path / "g.png", (299, 299))
    assert pixels.shape == (299, 299, 3) and pixels.dtype == np.uint8


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size: what a decompression bomb looks like before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def broken_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Each kind of bad file, with the word its rejection reason must contain."""
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "good.png")
    whole = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "text.png").write_text("this is not an image")
    (tmp_path / "bomb.png").write_bytes(png_header_claiming(50_000, 50_000))
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    return {"truncated": (tmp_path / "truncated.png", "truncated"),
            "text": (tmp_path / "text.png", "not an image"),
            "bomb": (tmp_path / "bomb.png", "decompression bomb"),
            "empty": (tmp_path / "empty.jpg", "not an image"),
            "missing": (tmp_path / "missing.png", "missing file"),
            "folder": (tmp_path / "folder.png", "not a regular file")}


@pytest.mark.parametrize("kind", ["truncated", "text", "bomb", "empty", "missing", "folder"])
def test_bad_files_are_rejected_with_a_reason(tmp_path, kind):
    path, reason = broken_inputs(tmp_path)[kind]
    with pytest.raises(ImageRejected, match=reason):
        load_model_input(path, (299, 299))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_turned_as_exif_transpose_does(tmp_path, monkeypatch, orientation):
    monkeypatch.setattr(images, "BAND_PIXELS", 200, raising=False)  # bands of a few rows, each turned
    rng = np.random.default_rng(orientation)
    image = Image.fromarray(rng.integers(0, 256, (23, 37, 4), dtype=np.uint8), "RGBA")
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(tmp_path / "turned.png", exif=exif)
    with Image.open(tmp_path / "turned.png") as reference:
        rgba = ImageOps.exif_transpose(reference).convert("RGBA")
        expected = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    assert np.array_equal(np.asarray(open_rgb(tmp_path / "turned.png")), np.asarray(expected.convert("RGB")))


def test_a_reduced_image_is_at_least_the_size_asked_for(tmp_path):
    Image.new("L", (1000, 700), 90).save(tmp_path / "g.png")
    assert open_rgb(tmp_path / "g.png", draft_size=(300, 200)).size == (334, 234)  # reduced 3 times
    assert open_rgb(tmp_path / "g.png", draft_size=(600, 400)).size == (1000, 700)  # not even twice


@pytest.fixture
def page_scan(tmp_path: Path) -> Path:
    """A 108-megapixel grey JPEG (12000 x 9000), as a 600-dpi scan of a half page: above Pillow's own
    limit of 89 megapixels, which refused such scans as decompression bombs."""
    page = Image.new("L", (12000, 9000), 230)
    for x in range(0, 12000, 400):
        page.paste(40, (x, 0, x + 160, 9000))
    page.save(tmp_path / "page.jpg", quality=80)
    return tmp_path / "page.jpg"


@pytest.fixture
def restore_max_pixels():
    yield
    images.set_max_pixels(images.DEFAULT_MAX_PIXELS)


def test_a_page_scan_above_pillows_limit_is_read_at_the_size_asked(page_scan, restore_max_pixels):
    assert images.MAX_PIXELS == images.DEFAULT_MAX_PIXELS >= 250_000_000
    pixels = load_model_input(page_scan, (299, 299))
    assert pixels.shape == (299, 299, 3)
    assert pixels[..., 0].min() < 100 < 200 < pixels[..., 0].max()  # the dark rules and the paper survive
    thumbnail = open_rgb(page_scan, draft_size=(400, 300))
    assert 400 <= thumbnail.width < 12000 // 4 and thumbnail.mode == "RGB"  # decoded small (draft), not whole
    images.set_max_pixels(100_000_000)
    with pytest.raises(ImageRejected,
                       match=r"12000x9000 is 108 megapixels, over the limit of 100 \(--max-pixels"):
        load_model_input(page_scan, (299, 299))


def test_a_png_declaring_ten_billion_pixels_is_refused_naming_the_option(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_header_claiming(100_000, 100_000))
    with pytest.raises(ImageRejected, match=r"100000x100000 is 10,000 megapixels, over the limit of 300 "
                                            r"\(--max-pixels; a decompression bomb"):
        open_rgb(tmp_path / "bomb.png")


@pytest.mark.parametrize("text, pixels", [("300M", 300_000_000), ("250000000", 250_000_000),
                                          ("1.5M", 1_500_000), ("12_000_000", 12_000_000)])
def test_max_pixels_values(text, pixels):
    assert images.parse_pixels(text) == pixels


@pytest.mark.parametrize("text", ["", "0", "-5", "lots", "M"])
def test_bad_max_pixels_values_are_refused(text):
    with pytest.raises(ValueError, match="megapixels"):
        images.parse_pixels(text)
