"""Decoding costs bounded memory (issue 9): small files that are large images are refused before they
are decoded, 16-bit and float scans are converted without float64 copies of the whole image, a large
JPEG is decoded near the model's size for uploads too, and at most two uploads decode at once.

Peak memory is measured in a fresh process, before and after, so the test process's own history does
not count: as VmHWM (the peak resident size of the process's memory since exec), not getrusage's
ru_maxrss, which a child started by fork and exec inherits from its parent (a test process that once
decoded a large image would hide every peak below its own). Ordinary images must give the same model
input as the plain whole-image path (decode, EXIF turn, convert, one bilinear resize) to one grey level.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from siamese import images, upload
from siamese.images import ImageRejected, load_model_input, open_rgb

pytestmark = pytest.mark.fast
ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
BOMB_SIDE = 9400  # 9400x9400 RGBA: 337 MiB decoded from a file of about 0.35 MB


# ------------------------------------------------------------------ images made cheaply, row by row

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    checksum = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", checksum)


def write_png_rows(path: Path, width: int, height: int, mode: str, row: Callable[[int], bytes]) -> Path:
    """A PNG written row by row (`row(y)` gives the pixel bytes of row y), never the whole image in
    memory: mode "RGBA", "L" (8 bits) or "I;16" (16-bit grey, big-endian samples). A row equal to the
    one above is stored as PNG's "up" filter of zeros, so a plain image makes a tiny file."""
    colour_type, depth = {"RGBA": (6, 8), "L": (0, 8), "I;16": (0, 16)}[mode]
    compressor = zlib.compressobj(9 if mode == "RGBA" else 1)  # RGBA: the tiny file of a huge image
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n")
        handle.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)))
        pending, above, zeros = [], None, b""
        for y in range(height):
            pixels = row(y)
            if pixels == above:
                zeros = zeros if len(zeros) == len(pixels) else bytes(len(pixels))
                pending.append(compressor.compress(b"\2" + zeros))
            else:
                pending.append(compressor.compress(b"\0" + pixels))
            above = pixels
            if sum(map(len, pending)) > 1 << 20:
                handle.write(_png_chunk(b"IDAT", b"".join(pending)))
                pending = []
        pending.append(compressor.flush())
        handle.write(_png_chunk(b"IDAT", b"".join(pending)))
        handle.write(_png_chunk(b"IEND", b""))
    return path


def write_huge_rgba_png(path: Path, side: int = BOMB_SIDE) -> Path:
    """A mostly white, half transparent square with a red band: a small file, a very large image."""
    plain = bytes((255, 255, 255, 128)) * side
    band = bytes((200, 0, 0, 255)) * side
    return write_png_rows(path, side, side, "RGBA",
                          lambda y: band if side // 3 <= y < side // 2 else plain)


def write_sixteen_bit_png(path: Path, width: int, height: int) -> Path:
    """16-bit grey with a texture (values up to about 25000)."""
    tile = np.tile(texture(256, 256).astype(">u2") * 97 + 11, (1, width // 256 + 1))[:, :width]
    rows = [tile[y].tobytes() for y in range(len(tile))]
    return write_png_rows(path, width, height, "I;16", lambda y: rows[y % len(rows)])


def texture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth shapes plus noise, uint8 (height, width): something a resize can get wrong."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.sin(x / 7.0) * 60 + np.cos(y / 11.0) * 60 + 128
    return np.clip(base + rng.integers(-40, 40, (height, width)), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ peak memory in a fresh process

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from PIL import Image
from siamese import images, upload, backbones
def peak_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
result = {}
before = peak_mib()
try:
    exec(sys.argv[2])
except Exception as error:
    result["error"] = type(error).__name__ + ": " + str(error)
result["growth_mib"] = peak_mib() - before
print(json.dumps(result))
"""


def peak_growth(code: str) -> dict:
    """Run `code` in a fresh interpreter (numpy, Pillow and siamese imported first); its peak memory
    growth in MiB ("growth_mib"), what it put in `result`, and "error" if it raised."""
    done = subprocess.run([sys.executable, "-c", PROBE, str(ROOT), code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ the small file of a huge image

@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    return write_huge_rgba_png(tmp_path_factory.mktemp("huge") / "huge.png")


def test_huge_rgba_png_is_refused_before_decoding(huge_png):
    assert huge_png.stat().st_size < 1_000_000
    code = f"""
for call in (lambda: images.load_model_input({str(huge_png)!r}, (299, 299)),
             lambda: images.open_rgb({str(huge_png)!r}, draft_size=(1200, 300))):
    try:
        call()
        result.setdefault("decoded", []).append(True)
    except images.ImageRejected as error:
        result.setdefault("reasons", []).append(str(error))
"""
    measured = peak_growth(code)
    assert "decoded" not in measured, measured
    for reason in measured["reasons"]:
        assert reason.startswith("too large to decode: 9400x9400 RGBA"), reason
        assert "337 MiB decoded" in reason and "limit 256 MiB" in reason, reason
    assert measured["growth_mib"] < 100, measured


def test_huge_png_upload_is_answered_400_with_the_reason(huge_png, histogram_collection):
    import webtest

    from app import Collection, make_app

    collection = Collection(histogram_collection.vector_dir, histogram_collection.index_dir,
                            histogram_collection.thumbnail_dir)
    client = webtest.TestApp(make_app(collection))
    files = [("image", "huge.png", huge_png.read_bytes(), "image/png")]
    answer = client.post("/api/search", upload_files=files, status=400).json
    assert "too large to decode: 9400x9400 RGBA" in json.dumps(answer), answer


def test_huge_png_is_a_reject_of_extraction(huge_png, tmp_path):
    from extract_vectors import extract_vectors

    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "small.png")
    (tmp_path / "huge.png").symlink_to(huge_png)
    (tmp_path / "metadata.csv").write_text("urn,path,date\nurn:small,small.png,1950-01-02\n"
                                               "urn:huge,huge.png,1950-01-03\n")
    report = extract_vectors(tmp_path / "metadata.csv", tmp_path / "vectors", model="colour-histogram",
                             workers=1, progress=False)
    assert report.stored == 1
    [(urn, _, reason)] = report.rejects
    assert urn == "urn:huge" and reason.startswith("too large to decode"), report.rejects
    assert "too large to decode" in (tmp_path / "vectors" / "rejects.csv").read_text()


# ------------------------------------------------------------------ wide pixels without float64 copies

def test_sixteen_bit_image_decodes_within_twice_its_decoded_size(tmp_path):
    path = write_sixteen_bit_png(tmp_path / "g16.png", 5000, 5000)
    decoded = 5000 * 5000 * 2 / MIB  # 48 MiB
    measured = peak_growth(f"result['shape'] = images.load_model_input({str(path)!r}, (299, 299)).shape")
    assert measured.get("shape") == [299, 299, 3], measured
    assert measured["growth_mib"] < 2 * decoded, measured


def test_float_image_decodes_within_twice_its_decoded_size(tmp_path):
    path = tmp_path / "f.tif"
    Image.fromarray(np.tile(texture(500, 500).astype(np.float32) * 0.37 - 5, (7, 7))).save(
        path, compression="tiff_adobe_deflate")  # compressed: decoded into memory, not mapped
    decoded = 3500 * 3500 * 4 / MIB  # 47 MiB
    measured = peak_growth(f"result['shape'] = images.load_model_input({str(path)!r}, (299, 299)).shape")
    assert measured.get("shape") == [299, 299, 3], measured
    assert measured["growth_mib"] < 2 * decoded, measured


def test_large_upload_jpeg_is_decoded_near_the_models_size(tmp_path):
    path = tmp_path / "large.jpg"
    Image.fromarray(np.tile(texture(500, 500), (12, 16))).convert("RGB").save(path, quality=80)
    decoded = 8000 * 6000 * 4 / MIB  # 183 MiB at full size (Pillow keeps RGB in 4 bytes)
    code = f"""
class Upload:
    raw_filename = "large.jpg"
    file = open({str(path)!r}, "rb")
class Collection:
    model = "colour-histogram"
    def embed(self, image, embedder):
        return backbones.embed_image(image, self.model, embedder)
vector, result["metadata"], _ = upload.embed_upload(Upload(), Collection(), backbones.colour_histogram)
result["dimensions"] = len(vector)
"""
    measured = peak_growth(code)
    assert measured.get("dimensions") == 512, measured
    assert measured["metadata"]["width"] == 8000 and measured["metadata"]["height"] == 6000, measured
    assert measured["growth_mib"] < decoded / 4, measured


# ------------------------------------------------------------------ uploads: two decodes at a time

def test_at_most_two_uploads_decode_at_once(monkeypatch, tmp_path):
    running, most = [0], [0]
    lock = threading.Lock()

    def slow_decode(path, size):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return np.zeros((*size[::-1], 3), np.uint8), (1, 1)

    monkeypatch.setattr(upload, "load_model_input_with_size", slow_decode)
    threads = [threading.Thread(target=upload.decode_upload, args=(tmp_path / "x.png", (8, 8)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == upload.MAX_CONCURRENT_DECODES == 2


def test_upload_reports_the_files_own_upright_size(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter
    Image.new("RGB", (1600, 900), (0, 0, 255)).save(tmp_path / "turned.jpg", exif=exif)
    pixels, size = upload.decode_upload(tmp_path / "turned.jpg", (299, 299))
    assert size == (900, 1600) and pixels.shape == (299, 299, 3)


def test_memory_is_handed_back_after_a_large_upload_only(monkeypatch, tmp_path):
    assert upload.return_freed_memory() in (True, False)  # True with glibc, a no-op elsewhere
    trims = []
    monkeypatch.setattr(upload, "return_freed_memory", lambda: trims.append(True))
    Image.new("L", (2000, 2000), 90).save(tmp_path / "large.png")
    Image.new("L", (200, 200), 90).save(tmp_path / "small.png")
    upload.decode_upload(tmp_path / "small.png", (64, 64))
    assert not trims
    upload.decode_upload(tmp_path / "large.png", (64, 64))
    assert trims == [True]


def test_upload_of_a_huge_image_is_an_upload_error(huge_png):
    with pytest.raises(upload.UploadError, match="too large to decode") as caught:
        upload.decode_upload(huge_png, (299, 299))
    assert caught.value.status == 400


# ------------------------------------------------------------------ ordinary images: the same input

def whole_image_model_input(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The plain path the model always had: decode (JPEG at draft size), EXIF turn, 16-bit scaled by
    its maximum and float by its range in float64, transparency onto white, one bilinear resize."""
    with Image.open(path) as image:
        if image.format == "JPEG":
            image.draft("RGB", size)
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(image, dtype=np.float64)
            image = Image.fromarray((array * (255.0 / (array.max() or 1.0))).astype(np.uint8))
        elif image.mode == "F":
            array = np.nan_to_num(np.asarray(image, dtype=np.float64))
            low, high = array.min(), array.max()
            image = Image.fromarray(((array - low) * (255.0 / (high - low))).astype(np.uint8))
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        image = image.convert("RGB")
        return np.asarray(image.resize(size, Image.Resampling.BILINEAR) if image.size != size else image)


def ordinary_image(mode: str, width: int, height: int) -> tuple[Image.Image, str]:
    grey = texture(width, height, seed=width + len(mode))
    rgb = np.stack([grey, np.roll(grey, 5, 1), 255 - grey], -1)
    if mode == "RGBA":
        return Image.fromarray(np.dstack([rgb, np.roll(grey, 3, 0)]), "RGBA"), "png"
    if mode == "LA":
        return Image.fromarray(np.dstack([grey, 255 - grey]), "LA"), "png"
    if mode == "P":
        return Image.fromarray(rgb).quantize(64), "png"
    if mode == "I;16":
        return Image.fromarray(grey.astype(np.uint16) * 97 + 11), "png"
    if mode == "F":
        return Image.fromarray(grey.astype(np.float32) * 0.37 - 5), "tif"
    if mode == "CMYK":
        return Image.fromarray(rgb).convert("CMYK"), "jpg"
    return Image.fromarray(rgb).convert(mode), "png" if mode != "YCbCr" else "jpg"


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "I;16", "F", "CMYK", "YCbCr"])
def test_ordinary_images_give_the_same_model_input(tmp_path, monkeypatch, mode, orientation):
    monkeypatch.setattr(images, "BAND_PIXELS", 20_000, raising=False)  # 640x480: about 30 rows a band
    for width, height in ((61, 40), (640, 480)):
        image, extension = ordinary_image(mode, width, height)
        path = tmp_path / f"{width}.{extension}"
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(path, exif=exif, **({"transparency": 3} if mode == "P" else {}))
        for size in ((299, 299), (128, 128), (300, 200)):
            expected = whole_image_model_input(path, size).astype(int)
            assert np.abs(load_model_input(path, size).astype(int) - expected).max() <= 1, (width, size)
        upright = ImageOps.exif_transpose(Image.open(path)).size
        assert open_rgb(path).size == upright


def test_thumbnail_source_is_reduced_and_looks_the_same(tmp_path):
    grey = np.tile(texture(300, 300), (6, 12))  # 3600x1800
    Image.fromarray(np.dstack([grey, grey, 255 - grey, np.full_like(grey, 200)]), "RGBA").save(
        tmp_path / "scan.png", compress_level=1)
    reduced = open_rgb(tmp_path / "scan.png", draft_size=(1200, 300))  # as make_thumbnails asks
    assert reduced.size == (1200, 600)  # reduced 3 times, still at least 1200 wide
    full = open_rgb(tmp_path / "scan.png")
    assert full.size == (3600, 1800)
    thumbnails = [np.asarray(image.resize((600, 300), Image.Resampling.LANCZOS), dtype=float)
                  for image in (reduced, full)]
    assert np.abs(thumbnails[0] - thumbnails[1]).mean() < 2


def test_decoded_bytes_follow_pillows_storage():
    assert images.decoded_bytes("RGBA", (9400, 9400)) == 9400 * 9400 * 4
    assert images.decoded_bytes("RGB", (10, 10)) == 400  # Pillow keeps RGB in 4 bytes a pixel
    assert images.decoded_bytes("I;16", (10, 10)) == 200
    assert images.decoded_bytes("L", (10, 10)) == 100
    assert images.decoded_bytes("F", (10, 10)) == 400


def test_a_grey_image_too_large_as_rgb_is_refused_only_at_full_size(tmp_path):
    side = 9000  # 77 MiB decoded (grey), 309 MiB as full-size RGB
    write_png_rows(tmp_path / "grey.png", side, side, "L", lambda y: bytes([y // 64 % 256]) * side)
    with pytest.raises(ImageRejected, match=r"9000x9000 L would take 77 MiB decoded and 309 MiB as RGB, "
                                            r"limit 256 MiB"):
        open_rgb(tmp_path / "grey.png")
    assert open_rgb(tmp_path / "grey.png", draft_size=(1200, 300)).size == (1286, 1286)  # 9000 / 7
