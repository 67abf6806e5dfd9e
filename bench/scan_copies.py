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
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from siamese.descriptors import DEFAULT_DESCRIPTOR_DIMENSIONS  # noqa: E402
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


# ------------------------------------------------------------------------------------ extract

def random_weights_embedder():
    """Inception v3 with random weights (seeded), the 2015 model's input scaling: the floor any claim
    of similarity must clear (a random network still groups crops of one picture)."""
    import keras

    from siamese.inception2015 import preprocess_2015

    keras.utils.set_random_seed(0)
    model = keras.applications.InceptionV3(weights=None, include_top=False, pooling="avg",
                                           input_shape=(299, 299, 3))
    return lambda batch: np.asarray(model.predict_on_batch(preprocess_2015(batch)), dtype=np.float32)


def extract(work: Path, name: str) -> None:
    """The vectors of the drawings and the copies, into work/vectors/<name>/{drawings,copies}."""
    from extract_vectors import extract_vectors

    embedder = random_weights_embedder() if name == "random-weights" else None
    for part in ("drawings", "copies"):
        report = extract_vectors(work / "images" / f"{part}.csv", work / "vectors" / name / part,
                                 model="inception-v3-2015", embedder=embedder, batch_size=32)
        print(f"{name} {part}: {report.summary(work / 'vectors' / name / part)}")


# ------------------------------------------------------------------------------------ evaluate

DESCRIPTOR_CONFIGURATIONS = {  # label -> AnnoyIndexer keywords
    "raw": {"descriptor": "raw"},
    "whitened 256": {"descriptor": "whitened", "descriptor_dimensions": 256},
    "whitened 512": {"descriptor": "whitened", "descriptor_dimensions": 512},
    "whitened 1024": {"descriptor": "whitened", "descriptor_dimensions": 1024},
}


def ranks_of(descriptors: np.ndarray, queries: np.ndarray, targets: np.ndarray,
             exclude: np.ndarray | None = None) -> np.ndarray:
    """1-based rank of each target among all rows for its query (exact euclidean; `exclude` rows
    (e.g. the query itself) never count)."""
    squares = np.einsum("ij,ij->i", descriptors, descriptors)
    distances = squares[None, :] - 2 * queries @ descriptors.T
    if exclude is not None:
        distances[np.arange(len(queries)), exclude] = np.inf
    own = distances[np.arange(len(queries)), targets]
    return (distances < own[:, None]).sum(axis=1) + 1


def index_bytes(index_dir: Path) -> int:
    return sum(path.stat().st_size for path in index_dir.iterdir() if path.suffix in (".ann", ".npy"))


def evaluate_configuration(work: Path, name: str, label: str, keywords: dict, annoy: bool) -> dict:
    """Per profile: copy -> original (top-1, MRR; exact, and Annoy as the app answers), and
    original -> copy recall@5 (exact, the copies indexed with the drawings)."""
    from annoy_indexer import AnnoyIndexer, read_manifest
    from siamese.descriptors import fit_descriptor_transform
    from siamese.index_dir import read_transform
    from siamese.vector_store import VectorStore

    drawings_dir, copies_dir = work / "vectors" / name / "drawings", work / "vectors" / name / "copies"
    drawings, copies = VectorStore(drawings_dir), VectorStore(copies_dir)
    row_of = {urn: row for row, urn in enumerate(drawings.urns)}
    profiles = np.array([urn.split(":")[1] for urn in copies.urns])
    targets = np.array([row_of["drawing:" + urn.split(":")[2]] for urn in copies.urns])
    index_dir = work / "indices" / name / label.replace(" ", "-")
    indexer = AnnoyIndexer(drawings_dir, index_dir, step_sizes=[10], verbose=False, **keywords)
    if read_manifest(index_dir) is None:
        indexer.build()
    transform = read_transform(index_dir, read_manifest(index_dir).get("transform"))
    stored = np.asarray(drawings.vectors)
    descriptors, queries = transform.apply(stored), transform.apply(np.asarray(copies.vectors))
    exact = ranks_of(descriptors, queries, targets)
    result = {"profiles": {}, "bytes_per_image": index_bytes(index_dir) / drawings.count,
              "dimensions": descriptors.shape[1]}
    annoy_ranks, times = np.full(len(targets), 10**6), []
    if annoy:
        indexer.query_vector(np.asarray(copies.vectors[0]), n=1)  # loaded before timing
        for i in tqdm(range(copies.count), desc=f"annoy {name} {label}", unit="q", file=sys.stderr,
                      leave=False):
            started = time.perf_counter()
            found = indexer.query_vector(np.asarray(copies.vectors[i]), n=10)
            times.append((time.perf_counter() - started) * 1000)
            urns = [neighbour["urn"] for neighbour in found]
            original = drawings.urns[targets[i]]
            annoy_ranks[i] = urns.index(original) + 1 if original in urns else 10**6
        result["query_ms"] = float(np.median(times))
    for profile in PROFILES:
        mask = profiles == profile
        figures = {"top1": float(np.mean(exact[mask] == 1)), "mrr": float(np.mean(1 / exact[mask]))}
        if annoy:
            figures["annoy_top1"] = float(np.mean(annoy_ranks[mask] == 1))
        # original -> copy: the copies of this profile indexed with the drawings (the transform fitted
        # on that collection, as a build would), each original's copy among its 5 nearest
        collection = np.vstack([stored, np.asarray(copies.vectors)[mask]])
        if keywords["descriptor"] == "raw":
            joint = collection
        else:
            joint = fit_descriptor_transform(collection, "whitened", keywords["descriptor_dimensions"])[0] \
                .apply(collection)
        originals = targets[mask]
        copy_rows = drawings.count + np.arange(mask.sum())
        ranks = ranks_of(joint, joint[originals], copy_rows, exclude=originals)
        figures["recall5"] = float(np.mean(ranks <= 5))
        result["profiles"][profile] = figures
    tops = [figures["top1"] for figures in result["profiles"].values()]
    result["mean_top1"], result["min_top1"] = float(np.mean(tops)), float(np.min(tops))
    return result


def copies_table(results: dict) -> list[str]:
    head = "| vectors | descriptor | " + " | ".join(PROFILES) + " | mean | min | Annoy mean | query ms | " \
           "index bytes/image |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (name, label), result in results.items():
        cells = [f"{result['profiles'][p]['top1']:.3f}" for p in PROFILES]
        annoy = [result["profiles"][p].get("annoy_top1") for p in PROFILES]
        annoy_mean = f"{np.mean(annoy):.3f}" if None not in annoy else ""
        ms = f"{result['query_ms']:.2f}" if "query_ms" in result else ""
        lines.append(f"| {name} | {label} ({result['dimensions']}-d) | " + " | ".join(cells) +
                     f" | {result['mean_top1']:.3f} | {result['min_top1']:.3f} | {annoy_mean} | {ms} | "
                     f"{result['bytes_per_image']:,.0f} |")
    return lines


def second_table(results: dict, key: str) -> list[str]:
    head = "| vectors | descriptor | " + " | ".join(PROFILES) + " | mean |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (name, label), result in results.items():
        values = [result["profiles"][p][key] for p in PROFILES]
        lines.append(f"| {name} | {label} | " + " | ".join(f"{v:.3f}" for v in values) +
                     f" | {np.mean(values):.3f} |")
    return lines


def reading(results: dict) -> list[str]:
    """What the tables say: the best configuration of real weights, and each step's gain over raw colour."""
    real = {key: result for key, result in results.items() if key[0] != "random-weights"}
    if not real:
        return []
    (name, label), best = max(real.items(), key=lambda item: item[1]["mean_top1"])
    lines = [f"* Best measured: {name}, {label}: copy -> original top-1 {best['mean_top1']:.3f} on average, "
             f"{best['min_top1']:.3f} on its worst profile (goal: 0.99 and 0.95)."]
    base = results.get(("inception-v3-2015", "raw"))
    default = f"whitened {DEFAULT_DESCRIPTOR_DIMENSIONS}"
    if base:
        for key, result in real.items():
            if key != ("inception-v3-2015", "raw") and key[1] in ("raw", default):
                gain, worst = result["mean_top1"] - base["mean_top1"], result["min_top1"] - base["min_top1"]
                lines.append(f"* {key[0]}, {key[1]}: {gain:+.3f} on average, {worst:+.3f} on the worst "
                             "profile, against colour input and raw vectors.")
    floor = results.get(("random-weights", default))
    if floor:
        dimensions = DEFAULT_DESCRIPTOR_DIMENSIONS
        lines.append(f"* Random weights, whitened {dimensions}: {floor['mean_top1']:.3f} on average. "
                     "Copies share "
                     "their pixels, so even a random network finds many; a similarity claim needs the "
                     "emoji twin task too, where random weights fail (docs/benchmarks.md, "
                     "bench/random_baseline.py: recall@1 0.17-0.25 against 0.83).")
    return lines


def evaluate(work: Path, out: Path, names: list[str]) -> None:
    started = time.perf_counter()
    results = {}
    for name in names:
        if not (work / "vectors" / name / "copies" / "store.json").is_file():
            print(f"{name}: no vectors (run: python bench/scan_copies.py extract --vectors {name})",
                  file=sys.stderr)
            continue
        for label, keywords in DESCRIPTOR_CONFIGURATIONS.items():
            annoy = name != "random-weights"
            results[(name, label)] = evaluate_configuration(work, name, label, keywords, annoy)
            print(" ".join(copies_table({(name, label): results[(name, label)]})[-1].split()), flush=True)
    drawings, copies = (len((work / "images" / f"{part}.csv").read_text(encoding="utf-8").splitlines()) - 1
                        for part in ("drawings", "copies"))
    lines = ["# Scan copies: does a re-scanned or reprinted copy find its original?", "",
             "Made by `bench/scan_copies.py` (issue 10); numbers below are from one run.", "",
             f"* command: `python bench/scan_copies.py evaluate` (after `prepare` and `extract`), "
             f"{(time.perf_counter() - started) / 60:.1f} min",
             f"* machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"Python {platform.python_version()}",
             f"* date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"* data: {drawings:,} distinct OpenClipArt drawings (Debian `openclipart-png`, near-duplicates "
             f"dropped by a perceptual hash), {copies // len(PROFILES)} of them copied under each of "
             f"{len(PROFILES)} profiles ({copies:,} copies): " + ", ".join(PROFILES), "",
             "## Copy -> original: top-1", "",
             "Each copy queried by its vector (as an upload is) among the drawings; the fraction whose "
             "original comes first. Exact search in the descriptor space; \"Annoy mean\" is the same "
             "through AnnoyIndexer.query_vector (PCA projection, Annoy candidates, exact re-ranking), "
             "\"query ms\" its median latency, \"index bytes/image\" the index directory's files "
             "(descriptors, Annoy, scan and rows) per drawing.", "",
             *copies_table(results), "",
             "## Copy -> original: mean reciprocal rank (exact)", "", *second_table(results, "mrr"), "",
             "## Original -> copy: recall@5", "",
             "The copies of one profile indexed with the drawings (the transform fitted on that "
             "collection); the fraction of originals whose copy is among their 5 nearest.", "",
             *second_table(results, "recall5"), "", "## Reading", "", *reading(results), ""]
    out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["prepare", "extract", "evaluate"])
    parser.add_argument("--vectors", nargs="+", default=["inception-v3-2015", "random-weights"],
                        help="which vectors (folders under WORK/vectors): inception-v3-2015 (the real "
                             "model), random-weights (the floor); extract makes these two, other folders "
                             "(e.g. inception-v3-2015-scan) come from extract_vectors.py --model/--input "
                             "on images/drawings.csv and images/copies.csv")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "scan-copies.md")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--originals", type=int, default=300)
    args = parser.parse_args(argv)
    if args.stage == "prepare":
        prepare(args.work, args.source, args.images, args.originals)
    elif args.stage == "extract":
        for name in args.vectors:
            extract(args.work, name)
    else:
        evaluate(args.work, args.out, args.vectors)
    return 0


if __name__ == "__main__":
    sys.exit(main())
