"""The scan-copy benchmark: does a re-scanned, reprinted or degraded copy of an image find its original?

    python bench/scan_copies.py prepare  [--work data/scan-copies] [--source DIR] [--images 3000]
                                         [--originals 300]
    python bench/scan_copies.py extract  [--work data/scan-copies] [--model inception-v3-2015] [--input grey]
    python bench/scan_copies.py evaluate [--work data/scan-copies] [--out docs/quality-scan-copies.md]

What newspaper reprints do to an image is what the copies here undergo (issue 10): another scan (slight
skew: rotate 3 and 8 degrees), another crop (85 % of each side), another paper and press (grey, sepia,
gamma and contrast, a 1-bit dithered halftone), another resolution (a quarter of each side and JPEG
quality 20). The images are OpenClipArt's drawings (Debian package openclipart-png, public domain):
printed-style line art and flat colour, like the advertisements' illustrations, and many of them one
artist's series that share frames and motifs, which is what makes "find *this* one" hard.

* prepare: picks --images distinct drawings (near-duplicates dropped by a perceptual hash, composited
  on white), --originals of them at random, and writes one copy of each original per profile, with the
  metadata CSVs the extraction reads. Deterministic (seeded).
* extract: the vectors of every original, distractor and copy, with extract_vectors (the real model).
* evaluate: for every descriptor configuration, per profile: copy -> original top-1 (the copy queried
  by its vector, as an upload is, among all the distinct drawings), original -> copy recall@5 (the
  copies indexed with the drawings), MRR; exact search and Annoy (AnnoyIndexer, as the app answers);
  query milliseconds and index bytes per image.

The drawings come through Debian's package client, not a download:
    apt-get download openclipart-png && dpkg-deb -x openclipart-png_*.deb data/quality/openclipart
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from siamese.images import ImageRejected, open_rgb  # noqa: E402

WORK = ROOT / "data" / "scan-copies"
SOURCE = ROOT / "data" / "quality" / "openclipart" / "usr" / "share" / "openclipart" / "png"
PROFILES = ("rotate3", "rotate8", "crop85", "grey", "quarter_jpeg20", "halftone", "gamma_contrast", "sepia")
PAPER = (255, 255, 255)


# ------------------------------------------------------------------------------------ prepare

def perceptual_hash(image: Image.Image) -> bytes:
    """A difference hash of the grey image at 17x16: equal for near-duplicates (recoloured, rescaled)."""
    small = np.asarray(image.convert("L").resize((17, 16), Image.Resampling.BILINEAR), dtype=np.int16)
    return np.packbits(small[:, 1:] > small[:, :-1]).tobytes()


def sepia(image: Image.Image) -> Image.Image:
    grey = np.asarray(image.convert("L"), dtype=np.float32) / 255
    tone = np.stack([grey * 240 + 15, grey * 200 + 20, grey * 145 + 20], axis=-1)  # brown ink, cream paper
    return Image.fromarray(np.clip(tone, 0, 255).astype(np.uint8))


def gamma_contrast(image: Image.Image) -> Image.Image:
    lut = [round(255 * (value / 255) ** 1.8) for value in range(256)] * 3
    return ImageEnhance.Contrast(image.point(lut)).enhance(1.3)


def copy_of(image: Image.Image, profile: str, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """The copy of `image` under `profile`, and the file suffix to save it with."""
    width, height = image.size
    if profile in ("rotate3", "rotate8"):
        angle = (3 if profile == "rotate3" else 8) * rng.choice([-1, 1])
        return image.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=PAPER), ".png"
    if profile == "crop85":
        w, h = round(width * 0.85), round(height * 0.85)
        left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        return image.crop((left, top, left + w, top + h)), ".png"
    if profile == "grey":
        return image.convert("L").convert("RGB"), ".png"
    if profile == "quarter_jpeg20":
        small = image.resize((max(1, width // 4), max(1, height // 4)), Image.Resampling.BILINEAR)
        return small, ".jpg"
    if profile == "halftone":
        return image.convert("L").convert("1").convert("RGB"), ".png"  # Floyd-Steinberg dither
    if profile == "gamma_contrast":
        return gamma_contrast(image), ".png"
    if profile == "sepia":
        return sepia(image), ".png"
    raise ValueError(profile)


def prepare(work: Path, source: Path, n_images: int, n_originals: int) -> None:
    paths = sorted(path for path in source.rglob("*.png") if not path.is_symlink())
    if not paths:
        sys.exit(f"no PNG files under {source}; see this script's --help for how to get them")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(paths))
    seen: set[bytes] = set()
    chosen: list[tuple[Path, Image.Image]] = []
    with tqdm(total=n_images, desc="choosing distinct drawings", unit="img", file=sys.stderr) as bar:
        for index in order:
            try:
                image = open_rgb(paths[index])
            except ImageRejected:
                continue
            if min(image.size) < 64:
                continue
            key = perceptual_hash(image)
            if key in seen or np.asarray(image.convert("L"), dtype=np.float32).std() < 4:
                continue  # a near-duplicate of one already chosen, or a blank page
            seen.add(key)
            chosen.append((paths[index], image))
            bar.update()
            if len(chosen) == n_images:
                break
    if len(chosen) < n_images:
        sys.exit(f"only {len(chosen)} distinct drawings under {source}, {n_images} asked for")
    images = work / "images"
    (images / "drawings").mkdir(parents=True, exist_ok=True)
    fields = ["urn", "path", "date", "source", "original"]
    drawings = []
    for number, (path, image) in enumerate(chosen):
        name = f"drawings/{number:05d}.png"
        image.save(images / name)
        drawings.append({"urn": f"drawing:{number:05d}", "path": name, "date": "1950",
                         "source": str(path.relative_to(source)), "original": ""})
    originals = sorted(rng.choice(len(chosen), n_originals, replace=False).tolist())
    copies = []
    for profile in PROFILES:
        (images / profile).mkdir(exist_ok=True)
        for number in tqdm(originals, desc=profile, unit="img", file=sys.stderr, leave=False):
            seed = int(hashlib.sha1(f"{profile}:{number}".encode()).hexdigest()[:8], 16)
            copy, suffix = copy_of(chosen[number][1], profile, np.random.default_rng(seed))
            name = f"{profile}/{number:05d}{suffix}"
            if suffix == ".jpg":
                copy.save(images / name, quality=20)
            else:
                copy.save(images / name)
            copies.append({"urn": f"copy:{profile}:{number:05d}", "path": name, "date": "1950",
                           "source": profile, "original": f"drawing:{number:05d}"})
    for name, rows in (("drawings.csv", drawings), ("copies.csv", copies)):
        with open(images / name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fields)
            writer.writeheader()
            writer.writerows(rows)
    print(f"{len(drawings)} drawings ({len(originals)} originals) and {len(copies)} copies in {images}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["prepare", "extract", "evaluate"])
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--originals", type=int, default=300)
    args = parser.parse_args(argv)
    if args.stage == "prepare":
        prepare(args.work, args.source, args.images, args.originals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
