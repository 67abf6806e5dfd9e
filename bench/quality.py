"""Retrieval quality of every available backbone, with Annoy and with exact search.

    python bench/quality.py [--out docs/quality.md] [--work data/quality] [--perturb-n 500]
                            [--stamps DIR] [--skip-perturb]

Two tasks (issue 4), each run for every backbone that loads on this machine:

* twin: the emoji demo collection (data/demo, 3,786 Google + 3,786 Twitter drawings). For each Google
  emoji with a Twitter twin, where does the twin rank among the other 7,571 images? recall@1, recall@10
  and mean reciprocal rank (counted to rank 100: a twin further down adds 0).
* perturb: N real images (Tux Paint's stamps, Debian package tuxpaint-stamps-default: many are photo
  cut-outs) and 5 perturbed copies of each (crop to 80 %, rotate 10 degrees, brightness/contrast, blur +
  JPEG quality 30, grey + noise), indexed together; for each original, its k = 1, 3, 5 nearest
  neighbours: precision, recall and F1 of its own copies (mean and standard deviation over originals).

"annoy" is what AnnoyIndexer answers (PCA projection + Annoy candidates + exact re-ranking, the
defaults); "exact" ranks every item by its exact euclidean distance. Their difference is what the
approximation costs. Vectors of backbones other than the demo's are written under --work (never into
data/demo). Prints one table and writes --out (command, machine, tables, reading).

The stamps come through Debian's package client, not a download:
    apt-get download tuxpaint-stamps-default
    dpkg-deb -x tuxpaint-stamps-default_*.deb data/quality/tuxpaint
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from annoy_indexer import AnnoyIndexer, read_manifest  # noqa: E402
from extract_vectors import extract_vectors  # noqa: E402
from siamese.backbones import BACKBONES, BackboneError  # noqa: E402
from siamese.descriptors import DEFAULT_DESCRIPTOR, DESCRIPTORS  # noqa: E402
from siamese.images import ImageRejected, load_model_input, open_rgb  # noqa: E402
from siamese.index_dir import read_transform  # noqa: E402
from siamese.vector_store import VectorStore, VectorStoreWriter  # noqa: E402

DEMO = ROOT / "data" / "demo"
MRR_DEPTH = 100
PERTURBATIONS = ("crop80", "rotate10", "light", "blur_jpeg30", "grey_noise")
KS = (1, 3, 5)


# ------------------------------------------------------------------------------------ helpers

def exact_order(vectors: np.ndarray, query_rows: np.ndarray, depth: int) -> np.ndarray:
    """For each query row, the `depth` nearest other rows by exact euclidean distance, nearest first."""
    vectors = np.asarray(vectors, dtype=np.float32)
    squares = np.einsum("ij,ij->i", vectors, vectors)
    result = np.empty((len(query_rows), depth), dtype=np.int64)
    for start in range(0, len(query_rows), 512):
        rows = query_rows[start:start + 512]
        distances = squares[None, :] - 2 * vectors[rows] @ vectors.T
        distances[np.arange(len(rows)), rows] = np.inf  # not itself
        part = np.argpartition(distances, depth, axis=1)[:, :depth]
        order = np.argsort(np.take_along_axis(distances, part, axis=1), axis=1, kind="stable")
        result[start:start + 512] = np.take_along_axis(part, order, axis=1)
    return result


def annoy_order(indexer: AnnoyIndexer, store: VectorStore, query_rows: np.ndarray, depth: int,
                label: str) -> np.ndarray:
    """The same, as AnnoyIndexer.query answers it (-1 where it returned fewer)."""
    result = np.full((len(query_rows), depth), -1, dtype=np.int64)
    for i, row in enumerate(tqdm(query_rows, desc=f"annoy queries {label}", unit="q", file=sys.stderr,
                                 leave=False)):
        found = [store.row_of(n["urn"]) for n in indexer.query(store.urns[row], n=depth)]
        result[i, :len(found)] = found
    return result


def ensure_vectors(metadata_csv: Path, vector_dir: Path, model: str, images_root: Path | None = None) -> str:
    """Extract (or finish extracting) a store; returns '' or why the model is unavailable here."""
    try:
        report = extract_vectors(metadata_csv, vector_dir, images_root=images_root, model=model,
                                 batch_size=32)
    except BackboneError as error:
        return re.split(r": |\. ", str(error))[0]
    if report.stored:
        print(f"{model}: {report.summary(vector_dir)}", file=sys.stderr)
    return ""


def indexer_for(vector_dir: Path, index_dir: Path, descriptor: str) -> AnnoyIndexer:
    indexer = AnnoyIndexer(vector_dir, index_dir, step_sizes=[10], verbose=False, descriptor=descriptor)
    indexer.build()
    return indexer


def descriptors_of(indexer: AnnoyIndexer, vectors: np.ndarray) -> np.ndarray:
    """`vectors` in the descriptor space of the indexer's indices (its saved transform applied here):
    exact search there is what the indices approximate."""
    transform = read_transform(indexer.index_dir, read_manifest(indexer.index_dir).get("transform"))
    return transform.apply(np.asarray(vectors))


# ------------------------------------------------------------------------------------ twin task

def twin_pairs(urns: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(google rows, their twins' rows, every twitter row) of a store of the emoji demo."""
    row_of_key = {}
    for row, urn in enumerate(urns):
        _, maker, unified = urn.split(":", 2)
        row_of_key[(maker, unified)] = row
    pairs = [(row, row_of_key[("twitter", unified)]) for (maker, unified), row in row_of_key.items()
             if maker == "google" and ("twitter", unified) in row_of_key]
    twitter = np.array(sorted(row for (maker, _), row in row_of_key.items() if maker == "twitter"))
    return np.array([g for g, _ in pairs]), np.array([t for _, t in pairs]), twitter


def rank_figures(order: np.ndarray, targets: np.ndarray) -> dict:
    """recall@1, recall@10 and MRR (ranks to the order's depth) of `targets` in each row of `order`."""
    hit = order == targets[:, None]
    ranks = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, 0)
    return {"r1": float(np.mean(ranks == 1)), "r10": float(np.mean((ranks >= 1) & (ranks <= 10))),
            "mrr": float(np.mean(np.where(ranks > 0, 1.0 / np.maximum(ranks, 1), 0.0)))}


def exact_order_among(vectors: np.ndarray, queries: np.ndarray, candidates: np.ndarray,
                      depth: int) -> np.ndarray:
    """The `depth` nearest of the `candidates` rows to each query row (exact), as store rows."""
    candidate_vectors = np.asarray(vectors[candidates], dtype=np.float32)
    squares = np.einsum("ij,ij->i", candidate_vectors, candidate_vectors)
    distances = squares[None, :] - 2 * np.asarray(vectors[queries], dtype=np.float32) @ candidate_vectors.T
    part = np.argpartition(distances, depth, axis=1)[:, :depth]
    order = np.argsort(np.take_along_axis(distances, part, axis=1), axis=1, kind="stable")
    return candidates[np.take_along_axis(part, order, axis=1)]


def twitter_store(store: VectorStore, twitter: np.ndarray, directory: Path) -> VectorStore:
    """The Twitter drawings alone, as a store of their own (copied rows; made once)."""
    if not (directory / "store.json").is_file() or VectorStore(directory).count != len(twitter):
        with VectorStoreWriter(directory, store.model, store.n_dimensions) as writer:
            for start in range(0, len(twitter), 1024):
                rows = twitter[start:start + 1024]
                writer.append(np.asarray(store.vectors[rows]), [store.items[int(row)] for row in rows])
    return VectorStore(directory)


def twin_task(model: str, work: Path, descriptor: str) -> dict:
    if model == "inception-v3-2015" and (DEMO / "vectors" / "store.json").is_file():
        vector_dir = DEMO / "vectors"  # made by `make demo`; only read here
    else:
        vector_dir = work / model / "emoji-vectors"
        why = ensure_vectors(DEMO / "metadata.csv", vector_dir, model)
        if why:
            return {"unavailable": why}
    store = VectorStore(vector_dir)
    if store.model != model:
        return {"unavailable": f"{vector_dir} holds {store.model} vectors"}
    queries, twins, twitter = twin_pairs(store.urns)
    started = time.perf_counter()
    # (a) among all the other 7,571 images, as the app searches: both makers
    indexer = indexer_for(vector_dir, work / model / f"emoji-indices-{descriptor}", descriptor)
    exact = exact_order(descriptors_of(indexer, store.vectors), queries, MRR_DEPTH)
    annoy = annoy_order(indexer, store, queries, MRR_DEPTH, f"twin {model}")
    result = {"pairs": len(queries), "items": store.count,
              "all": {"exact": rank_figures(exact, twins), "annoy": rank_figures(annoy, twins)},
              "overlap": float(np.mean([len(set(a) & set(e)) / 10 for a, e in
                                        zip(annoy[:, :10].tolist(), exact[:, :10].tolist(), strict=True)]))}
    # (b) among the Twitter drawings only (an index of them alone; the Google image queried by its
    # vector, as an upload would be): the cross-maker retrieval, without the same maker's look-alikes
    only = twitter_store(store, twitter, work / model / "twitter-vectors")
    twitter_indexer = indexer_for(only.directory, work / model / f"twitter-indices-{descriptor}", descriptor)
    row_in_only = {urn: row for row, urn in enumerate(only.urns)}
    targets = np.array([row_in_only[store.urns[row]] for row in twins])
    in_twitter_space = descriptors_of(twitter_indexer, store.vectors)
    exact_only = exact_order_among(in_twitter_space, queries, twitter, MRR_DEPTH)
    exact_only = np.vectorize(lambda row: row_in_only[store.urns[row]])(exact_only)
    annoy_only = np.full((len(queries), MRR_DEPTH), -1, dtype=np.int64)
    for i, row in enumerate(tqdm(queries, desc=f"annoy twitter-only {model}", unit="q", file=sys.stderr,
                                 leave=False)):
        found = twitter_indexer.query_vector(store.vectors[row], n=MRR_DEPTH)
        annoy_only[i, :len(found)] = [row_in_only[n["urn"]] for n in found]
    result["twitter"] = {"exact": rank_figures(exact_only, targets),
                         "annoy": rank_figures(annoy_only, targets)}
    result["seconds"] = time.perf_counter() - started
    return result


def pixels_reference() -> dict:
    """Raw 32x32 RGB pixels, exact search: the reference any image model must beat on the twin task."""
    with open(DEMO / "metadata.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    vectors = np.stack([load_model_input(DEMO / row["path"], (32, 32)).ravel()
                        for row in tqdm(rows, desc="raw pixels", unit="img", file=sys.stderr, leave=False)])
    vectors = vectors.astype(np.float32)
    urns = [row["urn"] for row in rows]
    queries, twins, twitter = twin_pairs(urns)
    return {"pairs": len(queries), "items": len(urns),
            "all": {"exact": rank_figures(exact_order(vectors, queries, MRR_DEPTH), twins)},
            "twitter": {"exact": rank_figures(exact_order_among(vectors, queries, twitter, MRR_DEPTH),
                                              twins)}}


# ------------------------------------------------------------------------------------ perturbation task

def perturb(image: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    width, height = image.size
    if kind == "crop80":
        w, h = max(1, round(width * 0.8)), max(1, round(height * 0.8))
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        return image.crop((x, y, x + w, y + h))
    if kind == "rotate10":
        angle = 10 if rng.random() < 0.5 else -10
        return image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=(255, 255, 255))
    if kind == "light":
        brightness = rng.choice([0.7, 1.3])
        contrast = rng.choice([0.7, 1.3])
        return ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(brightness)).enhance(contrast)
    if kind == "blur_jpeg30":
        return image.filter(ImageFilter.GaussianBlur(radius=max(1.0, min(width, height) / 150)))
    if kind == "grey_noise":
        grey = np.asarray(image.convert("L").convert("RGB"), dtype=np.float32)
        noisy = grey + rng.normal(0, 12, grey.shape)
        return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    raise ValueError(kind)


def make_perturbed_set(stamps: Path, out: Path, n: int) -> tuple[Path, int]:
    """N stamps (PNG, chosen with a fixed seed) and their 5 copies, with a metadata CSV."""
    metadata = out / "metadata.csv"
    if metadata.is_file():
        with open(metadata, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        if len(rows) == 6 * n:
            return metadata, n
    files = sorted(path for path in stamps.rglob("*.png") if path.is_file() and not path.is_symlink())
    rng = np.random.default_rng(0)
    chosen = [files[i] for i in rng.permutation(len(files))]
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows, used = [], 0
    for path in tqdm(chosen, desc="perturbing", unit="img", file=sys.stderr, leave=False):
        if used == n:
            break
        try:
            image = open_rgb(path)
        except ImageRejected:
            continue
        if min(image.size) < 48:
            continue
        stem = f"{used:04d}"
        image.save(out / "images" / f"{stem}.png")
        rows.append({"urn": f"stamp:{stem}", "path": f"images/{stem}.png", "date": "2000",
                     "source": str(path.relative_to(stamps))})
        for kind in PERTURBATIONS:
            copy = perturb(image, kind, np.random.default_rng([used, PERTURBATIONS.index(kind)]))
            name = f"{stem}-{kind}.jpg" if kind == "blur_jpeg30" else f"{stem}-{kind}.png"
            if kind == "blur_jpeg30":
                copy.save(out / "images" / name, "JPEG", quality=30)
            else:
                copy.save(out / "images" / name)
            rows.append({"urn": f"stamp:{stem}:{kind}", "path": f"images/{name}", "date": "2000",
                         "source": str(path.relative_to(stamps))})
        used += 1
    with open(metadata, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["urn", "path", "date", "source"])
        writer.writeheader()
        writer.writerows(rows)
    return metadata, used


def perturb_task(model: str, work: Path, metadata: Path, descriptor: str) -> dict:
    vector_dir = work / model / "perturb-vectors"
    why = ensure_vectors(metadata, vector_dir, model)
    if why:
        return {"unavailable": why}
    store = VectorStore(vector_dir)
    urns = store.urns
    originals = np.array([row for row, urn in enumerate(urns) if urn.count(":") == 1])
    group = np.array([urn.split(":")[1] for urn in urns])
    started = time.perf_counter()
    indexer = indexer_for(vector_dir, work / model / f"perturb-indices-{descriptor}", descriptor)
    orders = {"exact": exact_order(descriptors_of(indexer, store.vectors), originals, max(KS)),
              "annoy": annoy_order(indexer, store, originals, max(KS), f"perturb {model}")}
    result = {"originals": len(originals), "items": store.count, "seconds": time.perf_counter() - started}
    copies = len(PERTURBATIONS)
    for search, order in orders.items():
        relevant = np.where(order >= 0, group[np.maximum(order, 0)] == group[originals][:, None], False)
        figures = {}
        for k in KS:
            hits = relevant[:, :k].sum(axis=1)
            precision, recall = hits / k, hits / copies
            f1 = np.where(hits > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
            figures[k] = {name: (float(values.mean()), float(values.std()))
                          for name, values in (("p", precision), ("r", recall), ("f1", f1))}
        result[search] = figures
    return result


# ------------------------------------------------------------------------------------ report

def annoy_settings(work: Path) -> str:
    """The settings the indices were built with, as their manifests say."""
    settings = set()
    for manifest_path in sorted(work.glob("*/*-indices-*/index.json")):
        manifest = read_manifest(manifest_path.parent)
        settings.add(f"{manifest['index_dimensions']}-d PCA projection, {manifest['n_trees']} trees")
    return "; ".join(sorted(settings)) or "no indices"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def twin_table(results: dict) -> list[str]:
    lines = ["| backbone | search | among all: recall@1 | recall@10 | MRR@100 | among Twitter's: recall@1 | "
             "recall@10 | MRR@100 | Annoy's top 10 ∩ exact top 10 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model, result in results.items():
        if "unavailable" in result:
            lines.append(f"| {model} | — | unavailable here: {result['unavailable']} |" + " |" * 6)
            continue
        for search in ("exact", "annoy"):
            if search not in result["all"]:
                continue
            cells = [f"{result[setting][search][name]:.3f}" for setting in ("all", "twitter")
                     for name in ("r1", "r10", "mrr")]
            overlap = f"{result['overlap']:.3f}" if search == "annoy" else ""
            lines.append(f"| {model} | {search} | " + " | ".join(cells) + f" | {overlap} |")
    return lines


def perturb_table(results: dict) -> list[str]:
    lines = ["| backbone | search | " + " | ".join(f"P@{k} | R@{k} | F1@{k}" for k in KS) + " |",
             "|---|---|" + "---|" * (3 * len(KS))]
    for model, result in results.items():
        if "unavailable" in result:
            lines.append(f"| {model} | — | unavailable here: {result['unavailable']} |"
                         + " |" * (3 * len(KS) - 1))
            continue
        for search in ("exact", "annoy"):
            cells = [f"{mean:.3f} ± {std:.3f}" for k in KS
                     for mean, std in (result[search][k][name] for name in ("p", "r", "f1"))]
            lines.append(f"| {model} | {search} | " + " | ".join(cells) + " |")
    return lines


def reading(twins: dict, perturbs: dict) -> list[str]:
    lines = []
    done = {m: r for m, r in twins.items() if "unavailable" not in r}
    if "raw pixels 32x32" in done and len(done) > 1:
        figures = ", ".join(f"{model} {result['twitter']['exact']['r1']:.1%} / "
                            f"{result['twitter']['exact']['r10']:.1%}" for model, result in done.items())
        pixels = done["raw pixels 32x32"]["twitter"]["exact"]["r10"]
        verdicts = []
        for model, result in done.items():
            if model == "raw pixels 32x32" or model.startswith("colour-histogram"):
                continue
            gain = result["twitter"]["exact"]["r10"] - pixels
            verdict = ("hardly better than" if gain < 0.05 else "better than" if gain < 0.10
                       else "clearly better than")
            verdicts.append(f"{model} is {verdict} raw pixels ({100 * gain:+.1f} points of recall@10)")
        lines.append(
            f"* Twin task, among the Twitter drawings (recall@1 / recall@10, exact): {figures}. "
            + "; ".join(verdicts)
            + ("; " if verdicts else "")
            + "the colour histogram is nearly useless here (most emoji share one yellow and white). The "
            "emoji are 64-pixel flat drawings, scaled up to each network's input: far from the photos "
            "ImageNet networks learnt from, and a hard test for all of them.")
    default = f"inception-v3-2015 ({DEFAULT_DESCRIPTOR})"
    if default in done:
        inc_all = done[default]["all"]["exact"]
        lines.append(
            f"* Among all the images (both makers, as the app searches) the twin comes first for only "
            f"{inc_all['r1']:.1%} with Inception v3: the nearest images are mostly the same maker's other "
            "drawings (keycaps next to keycaps, one person's skin-tone and gender variants next to each "
            "other). A maker's style is closer than the other maker's version of the same thing; that is "
            "what Siamese is for (the look of an image), not a failure of the index.")
    for model, result in done.items():
        if "annoy" not in result["all"]:
            continue
        loss = result["all"]["exact"]["r10"] - result["all"]["annoy"]["r10"]
        lines.append(f"* What Annoy costs ({model}, twin task among all): recall@10 "
                     f"{result['all']['annoy']['r10']:.3f} against {result['all']['exact']['r10']:.3f} "
                     f"exact ({loss:.3f} lost); Annoy's top 10 holds {result['overlap']:.2%} of the exact "
                     "top 10.")
    for model, result in perturbs.items():
        if "unavailable" in result:
            continue
        exact, annoy = result["exact"][5]["r"][0], result["annoy"][5]["r"][0]
        lines.append(f"* Perturbation task ({model}, {result['originals']} originals): the 5 nearest "
                     f"neighbours hold {exact:.1%} of an original's 5 copies (exact), {annoy:.1%} with "
                     f"Annoy; P@1 {result['exact'][1]['p'][0]:.3f}.")
    lines.append("* Caveat: a perturbation test alone cannot tell a good model from a random one (a "
                 "random-weight CNN also ranks crops of one picture together); the twin task, two "
                 "different drawings of one thing, is where training has to show, with raw pixels as "
                 "the floor to beat.")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/quality.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "quality.md"))
    parser.add_argument("--work", default=str(ROOT / "data" / "quality"))
    parser.add_argument("--stamps", default=str(ROOT / "data" / "quality" / "tuxpaint" / "usr" / "share"
                                                / "tuxpaint" / "stamps"))
    parser.add_argument("--perturb-n", type=int, default=500)
    parser.add_argument("--skip-perturb", action="store_true")
    parser.add_argument("--models", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--descriptors", nargs="+", default=list(DESCRIPTORS), choices=list(DESCRIPTORS),
                        help="descriptor spaces to search (siamese/descriptors.py; default: all)")
    args = parser.parse_args(argv)
    work = Path(args.work)
    started = time.perf_counter()
    twins = {f"{model} ({descriptor})": twin_task(model, work, descriptor)
             for model in args.models for descriptor in args.descriptors}
    twins["raw pixels 32x32"] = pixels_reference()
    perturbs: dict = {}
    note = ""
    if args.skip_perturb:
        note = "perturbation task not run this time (--skip-perturb)"
    else:
        stamps = Path(args.stamps)
        if stamps.is_dir():
            metadata, used = make_perturbed_set(stamps, work / "perturbed", args.perturb_n)
            perturbs = {f"{model} ({descriptor})": perturb_task(model, work, metadata, descriptor)
                        for model in args.models for descriptor in args.descriptors}
        else:
            note = f"perturbation task skipped: no stamps in {stamps} (see the module docstring)"
    seconds = time.perf_counter() - started
    command = "python bench/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = [
        "# Retrieval quality", "",
        "Made by `bench/quality.py` (issue 4); numbers below are from one run.", "",
        f"* command: `{command.strip()}`",
        f"* machine: {machine()}",
        f"* date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {seconds / 60:.1f} min in all (vectors "
        "already in the work folder are reused; a first run, which extracts the emoji with every model "
        "but the demo's Inception v3 and the 3,000 stamp images with all of them, took about 12 minutes "
        "on 2 cores)", "",
        "## Same content, other artwork: Google emoji → its Twitter twin", "",
        f"{next((r['pairs'] for r in twins.values() if 'pairs' in r), 0):,} queries, each among "
        f"{next((r['items'] for r in twins.values() if 'items' in r), 0):,} images (itself left out). "
        "\"Among all\": the twin's rank among all the other images, both makers, as the app searches. "
        "\"Among Twitter's\": its rank among the 3,786 Twitter drawings only (an index of them alone, "
        "queried with the Google image's vector through AnnoyIndexer.query_vector, as an upload is). "
        "MRR counts ranks to 100 (a twin further down adds 0). Each backbone in each descriptor space "
        "(siamese/descriptors.py: raw, the vectors as stored; whitened, fitted on the indexed images "
        "themselves); exact search ranks every image there. Annoy: AnnoyIndexer's defaults "
        f"({annoy_settings(work)}, candidates re-ranked exactly).", "",
        *twin_table(twins), "",
        "## Perturbation recovery: an original among its own 5 copies", "",
        (note or f"{args.perturb_n} Tux Paint stamps (Debian `tuxpaint-stamps-default`, composited on "
                 "white) and 5 copies each: crop to 80 %, rotate ±10° (white fill), brightness and "
                 "contrast ×0.7 or ×1.3, Gaussian blur + JPEG quality 30, grey + noise (σ 12). Mean ± "
                 "standard deviation over the originals; precision P@k = copies among the k nearest / "
                 "k, recall R@k = copies among them / 5."), "",
        *(perturb_table(perturbs) if perturbs else []), "",
        "## Reading", "",
        *reading(twins, perturbs), "",
    ]
    Path(args.out).write_text("\n".join(out), encoding="utf-8")
    print("\n".join(twin_table(twins)))
    if perturbs:
        print()
        print("\n".join(perturb_table(perturbs)))
    print(f"\nwritten to {args.out} in {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
