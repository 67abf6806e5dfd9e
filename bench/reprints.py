"""Reprint verification (siamese/reprints.py): does it say yes to another scan of the same image, and
no to a different image that looks alike or shares its layout? What does it cost per query?

    python bench/reprints.py [--work data/scan-copies] [--queries 60] [--candidates 20]
                             [--ads 40] [--out docs/reprints.md]

Two measurements, on real images:

* Scan copies (bench/scan_copies.py's data: 3,000 OpenClipArt drawings, copies under 8 profiles; run its
  prepare and extract first). For the copies of --queries originals, the --candidates nearest drawings
  by the default descriptor (as the app finds them) are checked against the copy, the candidates on
  thumbnails (300 px high, as make_thumbnails.py makes them), the copy as uploaded. Per profile:
  top-1 before and after verified reprints are put first, the fraction of copies whose original
  (when among the candidates) is accepted, and the other candidates accepted (different drawings; many
  of OpenClipArt's are one drawing in other colours, which a grey copy cannot tell apart).
* Advertisements of one template: --ads advertisements laid out alike (frame, headline, picture,
  text, price), each with its own drawing and text. Each one re-scanned (turned, cropped, grey, lower
  resolution and JPEG; or a 1-bit halftone) must be accepted; its siblings of the same template must
  not, although they share frame, headline and layout (their inlier counts are reported too: a raw
  count would call many of them reprints).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from siamese.reprints import (  # noqa: E402
    DEFAULT_RULE,
    LOOK_DEEPER,
    MAX_CANDIDATES,
    NOT_MATCHED,
    check_reprint,
    image_features,
    verify,
)

WORK = ROOT / "data" / "scan-copies"
SIZE_BUCKETS = (("under 40 px", 40), ("40-79 px", 80), ("80-159 px", 160), ("160 px and more", 10**9))
AD_SIZE = (480, 640)
WORDS = ("fresh", "daily", "quality", "famous", "modern", "bargain", "new", "genuine", "best", "value",
         "soap", "coffee", "shoes", "radio", "bicycle", "tea", "cocoa", "stockings", "cigars", "margarine")


# ------------------------------------------------------------------------------------ advertisements

def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's own scalable font: no system font needed


def make_ad(picture: Image.Image, headline: str, lines: list[str], price: str) -> Image.Image:
    """An advertisement of the one template every call shares: double frame, headline, picture in the
    middle, two lines of text, a price. What differs between two ads is the picture and the text."""
    ad = Image.new("RGB", AD_SIZE, "white")
    draw = ImageDraw.Draw(ad)
    width, height = AD_SIZE
    draw.rectangle((8, 8, width - 9, height - 9), outline="black", width=6)
    draw.rectangle((22, 22, width - 23, height - 23), outline="black", width=2)
    draw.text((width / 2, 70), headline, font=_font(44), fill="black", anchor="mm")
    draw.line((60, 110, width - 60, 110), fill="black", width=3)
    box = (60, 130, width - 60, 420)
    shown = ImageOps.contain(picture.convert("RGB"), (box[2] - box[0], box[3] - box[1]),
                             Image.Resampling.BICUBIC)
    left = box[0] + (box[2] - box[0] - shown.width) // 2
    ad.paste(shown, (left, box[1] + (box[3] - box[1] - shown.height) // 2))
    for number, line in enumerate(lines):
        draw.text((width / 2, 460 + 40 * number), line, font=_font(26), fill="black", anchor="mm")
    draw.rectangle((150, 540, width - 150, 600), fill="black")
    draw.text((width / 2, 570), price, font=_font(34), fill="white", anchor="mm")
    return ad


def ad_text(rng: np.random.Generator) -> tuple[list[str], str]:
    lines = [" ".join(rng.choice(WORDS, 3)).capitalize() for _ in range(2)]
    return lines, f"f {rng.integers(1, 99)},{rng.integers(10, 99)}"


def rescan(image: Image.Image, profile: str, rng: np.random.Generator) -> Image.Image:
    """Another scan of a printed page: 'rescan' turns it 1.5-3 degrees, crops 4 % off each side, greys
    it and halves its resolution with JPEG quality 40; 'halftone' prints it as 1-bit dots at 80 %."""
    if profile == "halftone":
        small = image.resize((image.width * 4 // 5, image.height * 4 // 5), Image.Resampling.BILINEAR)
        return small.convert("L").convert("1").convert("RGB")
    angle = float(rng.uniform(1.5, 3.0) * rng.choice([-1, 1]))
    turned = image.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=(250, 248, 240))
    width, height = turned.size
    cropped = turned.crop((width * 0.04, height * 0.04, width * 0.96, height * 0.96))
    grey = cropped.convert("L").resize((cropped.width // 2, cropped.height // 2), Image.Resampling.BILINEAR)
    from io import BytesIO
    buffer = BytesIO()
    grey.save(buffer, "JPEG", quality=40)
    return Image.open(BytesIO(buffer.getvalue())).convert("RGB")


def template_ads(pictures: list[Image.Image], headline: str = "HOLLAND STORES", seed: int = 0
                 ) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [make_ad(picture, headline, *ad_text(rng)) for picture in pictures]


def evaluate_ads(pictures: list[Image.Image]) -> dict:
    ads = template_ads(pictures)
    features = [image_features(ad) for ad in ads]
    rng = np.random.default_rng(1)
    accepted = {"rescan": [], "halftone": []}
    siblings, sibling_inliers = [], []
    for number, ad in enumerate(ads):
        for profile in accepted:
            copy = image_features(rescan(ad, profile, rng))
            accepted[profile].append(check_reprint(copy, features[number]).reprint)
            if profile == "rescan":  # the copy against every other ad of the template
                for other in range(len(ads)):
                    if other != number:
                        check = check_reprint(copy, features[other])
                        siblings.append(check.reprint)
                        sibling_inliers.append(check.inliers)
    inliers = np.array(sibling_inliers)
    # the same picture in the same template, with other text; or only another price
    other_text, other_price = [], []
    for picture in pictures:
        lines, price = ad_text(rng)
        original = make_ad(picture, "HOLLAND STORES", lines, price)
        copy = image_features(rescan(original, "rescan", rng))
        new_lines, new_price = ad_text(rng)
        other_text.append(check_reprint(copy, image_features(
            make_ad(picture, "HOLLAND STORES", new_lines, new_price))).reprint)
        other_price.append(check_reprint(copy, image_features(
            make_ad(picture, "HOLLAND STORES", lines, new_price))).reprint)
    return {"ads": len(ads), "rescan": float(np.mean(accepted["rescan"])),
            "other_text": float(np.mean(other_text)), "other_price": float(np.mean(other_price)),
            "halftone": float(np.mean(accepted["halftone"])), "siblings": len(siblings),
            "siblings_accepted": int(np.sum(siblings)),
            "siblings_with_min_inliers": float(np.mean(inliers >= DEFAULT_RULE.min_inliers)),
            "sibling_inliers_median": float(np.median(inliers))}


# ------------------------------------------------------------------------------------ scan copies

def depth(candidates: int) -> int:
    """How many nearest rows verification may reach, as the app allows (Collection.neighbours)."""
    return max(candidates, min(MAX_CANDIDATES, LOOK_DEEPER * candidates))


def thumbnail_loader(work: Path):
    """Features of a drawing's 300 px high thumbnail (as make_thumbnails.py makes it), by store row,
    cached; `.cache` holds the rows already made."""
    from siamese.images import open_rgb
    from siamese.vector_store import VectorStore

    urns = VectorStore(work / "vectors" / "inception-v3-2015" / "drawings").urns
    with open(work / "images" / "drawings.csv", encoding="utf-8") as handle:
        paths = {row["urn"]: row["path"] for row in csv.DictReader(handle)}
    cache: dict[int, object] = {}

    def load(row: int):
        if row not in cache:
            image = open_rgb(work / "images" / paths[urns[row]])
            if image.height > 300:
                image = image.resize((max(1, round(image.width * 300 / image.height)), 300),
                                     Image.Resampling.LANCZOS)
            cache[row] = image_features(image)
        return cache[row]

    load.cache = cache
    return load


def evaluate_scan_copies(work: Path, queries: int, candidates: int) -> dict:
    sys.path.insert(0, str(ROOT / "bench"))
    from scan_copies import PROFILES

    from siamese.descriptors import fit_descriptor_transform
    from siamese.images import open_rgb
    from siamese.vector_store import VectorStore

    vectors = work / "vectors" / "inception-v3-2015"
    drawings, copies = VectorStore(vectors / "drawings"), VectorStore(vectors / "copies")
    row_of = {urn: row for row, urn in enumerate(drawings.urns)}
    profiles = np.array([urn.split(":")[1] for urn in copies.urns])
    targets = np.array([row_of["drawing:" + urn.split(":")[2]] for urn in copies.urns])
    transform = fit_descriptor_transform(np.asarray(drawings.vectors), "whitened", 256)[0]
    stored, asked = transform.apply(np.asarray(drawings.vectors)), transform.apply(np.asarray(copies.vectors))
    paths = {}
    for name in ("drawings.csv", "copies.csv"):
        with open(work / "images" / name, encoding="utf-8") as handle:
            paths.update((row["urn"], row["path"]) for row in csv.DictReader(handle))
    chosen = set(np.random.default_rng(1).choice(sorted(set(targets)), queries, replace=False).tolist())
    thumbnail = thumbnail_loader(work)

    figures = {profile: {"global": [], "verified": [], "true_accepted": []} for profile in PROFILES}
    wrong = wrong_accepted = 0
    cold, warm = [], []
    by_size: dict[tuple[str, str], list] = {}
    checked: list[int] = []
    from tqdm import tqdm
    for query in tqdm(np.flatnonzero(np.isin(targets, list(chosen))), desc="scan copies", unit="query",
                      file=sys.stderr):
        distances = (stored ** 2).sum(1) - 2 * stored @ asked[query]
        nearest = np.argsort(distances)[:depth(candidates)]
        started = time.perf_counter()
        copy_image = open_rgb(work / "images" / paths[copies.urns[query]])
        copy = image_features(copy_image)
        new = [row for row in nearest[:candidates] if row not in thumbnail.cache]
        verification = verify(copy, nearest.tolist(), thumbnail, "thumbnails", batch=candidates)
        (cold if new else warm).append((time.perf_counter() - started) * 1000)
        checked.append(len(verification.checks))
        checks = verification.checks
        verified = [row for row in nearest if checks.get(int(row), NOT_MATCHED).reprint]
        first = verified[0] if verified else nearest[0]
        result = figures[profiles[query]]
        result["global"].append(nearest[0] == targets[query])
        result["verified"].append(first == targets[query])
        side = max(copy_image.size)
        bucket = next(label for label, limit in SIZE_BUCKETS if side < limit)
        by_size.setdefault((str(profiles[query]), bucket), []).append(
            (nearest[0] == targets[query], first == targets[query], int(targets[query]) in checks))
        if int(targets[query]) in checks:
            result["true_accepted"].append(checks[int(targets[query])].reprint)
        others = [check.reprint for row, check in checks.items() if row != targets[query]]
        wrong += len(others)
        wrong_accepted += sum(others)
    return {"profiles": {profile: {key: float(np.mean(values)) for key, values in result.items()}
                         for profile, result in figures.items()},
            "queries": int(sum(len(result["global"]) for result in figures.values())),
            "wrong": wrong, "wrong_accepted": wrong_accepted,
            "by_size": {key: [*np.mean(values, axis=0).tolist(), len(values)]
                        for key, values in by_size.items()},
            "checked": float(np.mean(checked)),
            "ms_cold": float(np.median(cold)) if cold else None,
            "ms_warm": float(np.median(warm)) if warm else None}


def evaluate_ad_retrieval(work: Path, pictures: list[Image.Image], candidates: int) -> dict:
    """Each advertisement re-scanned and printed as a halftone, queried as an upload among all the
    advertisements of the template and the 3,000 drawings (real model, default descriptor): how often
    its own advertisement comes first, before and after verified reprints are put first."""
    from siamese.backbones import embed_image, shared_embedder
    from siamese.descriptors import fit_descriptor_transform
    from siamese.vector_store import VectorStore

    embedder = shared_embedder("inception-v3-2015")
    ads = template_ads(pictures)
    drawings = np.asarray(VectorStore(work / "vectors" / "inception-v3-2015" / "drawings").vectors)
    stored = np.vstack([np.stack([embed_image(ad, "inception-v3-2015", embedder) for ad in ads]), drawings])
    transform = fit_descriptor_transform(stored, "whitened", 256)[0]
    descriptors = transform.apply(stored)
    thumbnails = [image_features(ImageOps.contain(ad, (10**4, 300))) for ad in ads]
    checked = {"rescan": [], "halftone": []}
    drawing = thumbnail_loader(work)
    rng = np.random.default_rng(3)
    found = {"rescan": [[], []], "halftone": [[], []]}
    for number, ad in enumerate(ads):
        for profile, (plain, verified) in found.items():
            copy = rescan(ad, profile, rng)
            query = transform.apply(embed_image(copy, "inception-v3-2015", embedder)[None])[0]
            nearest = np.argsort((descriptors ** 2).sum(1) - 2 * descriptors @ query)[:depth(candidates)]
            verification = verify(image_features(copy), nearest.tolist(),
                                  lambda row: thumbnails[row] if row < len(ads) else drawing(row - len(ads)),
                                  "thumbnails", batch=candidates)
            accepted = [row for row in nearest if verification.checks.get(int(row), NOT_MATCHED).reprint]
            checked[profile].append(len(verification.checks))
            plain.append(nearest[0] == number)
            verified.append((accepted[0] if accepted else nearest[0]) == number)
    return {profile: (float(np.mean(plain)), float(np.mean(verified)), float(np.median(checked[profile])))
            for profile, (plain, verified) in found.items()}


def drawings_for_ads(work: Path, count: int) -> list[Image.Image]:
    from siamese.images import open_rgb

    with open(work / "images" / "drawings.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    chosen = np.random.default_rng(2).choice(len(rows), count, replace=False)
    return [open_rgb(work / "images" / rows[i]["path"]) for i in chosen]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--queries", type=int, default=60, help="originals whose 8 copies are queried")
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--ads", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reprints.md")
    args = parser.parse_args(argv)
    if not (args.work / "vectors" / "inception-v3-2015" / "copies" / "store.json").is_file():
        parser.error(f"no scan-copy vectors in {args.work}: run bench/scan_copies.py prepare and extract")
    started = time.perf_counter()
    pictures = drawings_for_ads(args.work, args.ads)
    ads = evaluate_ads(pictures)
    print(ads, flush=True)
    retrieval = evaluate_ad_retrieval(args.work, pictures, args.candidates)
    print(retrieval, flush=True)
    copies = evaluate_scan_copies(args.work, args.queries, args.candidates)
    rule = ", ".join(f"{name} {value}" for name, value in DEFAULT_RULE.__dict__.items())
    profiles = copies["profiles"]
    lines = ["# Reprint verification", "",
             "Made by `bench/reprints.py` (issue 10); numbers from one run.", "",
             f"* command: `python bench/reprints.py --queries {args.queries} --candidates {args.candidates} "
             f"--ads {args.ads}`, {(time.perf_counter() - started) / 60:.1f} min",
             f"* machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"Python {platform.python_version()}",
             f"* date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"* rule (siamese/reprints.py `ReprintRule`): {rule}", "",
             "## Re-scanned copies among 3,000 drawings", "",
             f"{copies['queries']} copies (the 8 profiles of {args.queries} originals) queried by their "
             f"vector among the drawings (colour input, whitened 256, the default); the {args.candidates} "
             f"nearest checked on 300 px thumbnails (and {args.candidates} more, up to "
             f"{depth(args.candidates)}, while half of those checked are near misses, as the app does; "
             f"{copies['checked']:.1f} checked on average), verified reprints put first.", "",
             "| profile | top-1 global | top-1 verified first | original accepted (when a candidate) |",
             "|---|---|---|---|"]
    for profile, figures in profiles.items():
        lines.append(f"| {profile} | {figures['global']:.3f} | {figures['verified']:.3f} | "
                     f"{figures['true_accepted']:.3f} |")
    mean = {key: np.mean([figures[key] for figures in profiles.values()]) for key in ("global", "verified")}
    lines += [f"| mean | {mean['global']:.3f} | {mean['verified']:.3f} | |", "",
              f"* other drawings accepted: {copies['wrong_accepted']} of {copies['wrong']} candidates "
              f"({copies['wrong_accepted'] / max(copies['wrong'], 1):.2%}); nearly all one drawing in other "
              "colours, or spirograph and chevron series that are alike to the pixel at thumbnail size.",
              f"* time per query ({args.candidates} candidates or more): median {copies['ms_cold']:.0f} ms "
              "when "
              f"candidate features are computed, {copies['ms_warm'] or 0:.0f} ms when they are cached "
              "(siamese/reprints.FeatureCache).", "",
              "By the copy's longer side, for the two profiles that shrink or dither (many drawings are "
              "small icons, so a quarter-size copy can be 16 px wide; top-1 global / verified first / "
              "original among the candidates, and how many copies):", "",
              "| profile | copy size | top-1 global | top-1 verified | original a candidate | copies |",
              "|---|---|---|---|---|---|",
              *[f"| {profile} | {bucket} | {values[0]:.3f} | {values[1]:.3f} | {values[2]:.3f} | "
                f"{values[3]} |"
                for profile in ("quarter_jpeg20", "halftone") for bucket, _ in SIZE_BUCKETS
                for values in [copies["by_size"].get((profile, bucket))] if values], "",
              "## Advertisements of one template", "",
              f"{ads['ads']} advertisements laid out alike (double frame, headline \"HOLLAND STORES\", a "
              "drawing, two lines of text, a price), each with its own drawing and text.", "",
              f"* re-scanned (turned 1.5-3 degrees, cropped, grey, half resolution, JPEG 40) accepted: "
              f"{ads['rescan']:.3f}",
              f"* as a 1-bit halftone at 80 % accepted: {ads['halftone']:.3f}",
              f"* another advertisement of the same template accepted: {ads['siblings_accepted']} of "
              f"{ads['siblings']} pairs, although {ads['siblings_with_min_inliers']:.0%} of them have "
              f"{DEFAULT_RULE.min_inliers}+ RANSAC inliers (median {ads['sibling_inliers_median']:.0f}): an "
              "inlier count alone is not a reprint test; coverage and cell agreement are.",
              f"* the same drawing in the same template with two other lines of text and another price, "
              f"accepted: {ads['other_text']:.3f}; with only another price (7 characters): "
              f"{ads['other_price']:.3f}. A reprint with a new price or date counts as the same image: "
              "a few characters are below what the cells can tell from another scan's noise.",
              f"* finding the advertisement: each re-scan queried as an upload (real model, colour input, "
              f"whitened 256) among the {ads['ads']} advertisements of the template and the 3,000 drawings, "
              f"its own advertisement first: re-scan {retrieval['rescan'][0]:.3f} by the descriptor alone, "
              f"{retrieval['rescan'][1]:.3f} with verified reprints first; halftone "
              f"{retrieval['halftone'][0]:.3f} and {retrieval['halftone'][1]:.3f} (median candidates "
              "checked: "
              f"{retrieval['rescan'][2]:.0f} and {retrieval['halftone'][2]:.0f}). The siblings of one "
              "template look alike to the global descriptor, and crowd the nearest; verification tells "
              "them apart, and looks deeper while it meets them.", ""]
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
