"""Is image decoding hidden behind the model? Extraction pipeline images/s vs raw model images/s.

    python bench/extract_speed.py [--metadata data/demo/metadata.csv] [--n-images 512]
                                  [--batch-size 64] [--model inception-v3-2015] [--jpeg-size 2000x1400]

Three figures on the same images and batch size, model loaded once beforehand:
  raw model      embedder on batches already decoded in memory (median batch time)
  decode only    the decoding thread pool alone, no model
  pipeline       extract_vectors() end to end: decode + model + committing to a fresh vector store
The ratio pipeline/raw says how much of the model's speed the pipeline keeps (target >= 0.9 on CPU).
With --jpeg-size the emoji are first written as large JPEGs (like newspaper scans), so decoding costs
what it would on a real archive.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from extract_vectors import decode_in_background, extract_vectors  # noqa: E402
from siamese.backbones import DEFAULT_BACKBONE, get_backbone  # noqa: E402
from siamese.metadata import read_metadata  # noqa: E402


def make_large_jpegs(records, images_root: Path, out_dir: Path, size: tuple[int, int]) -> Path:
    """Write each image as a large JPEG with some texture; returns a CSV pointing at them."""
    rng = np.random.default_rng(0)
    rows = []
    for record in records:
        with Image.open(record.resolve(images_root)) as image:
            rgba = image.convert("RGBA")
        canvas = Image.new("RGB", size, (236, 230, 214))
        side = min(size) * 3 // 4
        canvas.paste(rgba.resize((side, side), Image.Resampling.BILINEAR), (size[0] // 8, size[1] // 8),
                     rgba.resize((side, side), Image.Resampling.BILINEAR))
        noise = rng.normal(0, 6, (size[1], size[0], 1)).astype(np.int16)
        pixels = np.clip(np.asarray(canvas, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        path = out_dir / f"{len(rows)}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        rows.append({"urn": record.urn, "path": str(path), "date": record.date})
    csv_path = out_dir / "large.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["urn", "path", "date"])
        writer.writeheader()
        writer.writerows(rows)
    return csv_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--metadata", type=Path, default=ROOT / "data" / "demo" / "metadata.csv",
                        help="collection to read (default: the demo; run demo/fetch_emoji.py first)")
    parser.add_argument("--n-images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", default=DEFAULT_BACKBONE)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternating raw/pipeline rounds; medians are reported")
    parser.add_argument("--jpeg-size", default=None, metavar="WxH",
                        help="re-encode the images as large JPEGs of this size first")
    args = parser.parse_args()

    records = read_metadata(args.metadata)[0][: args.n_images]
    metadata = args.metadata
    with tempfile.TemporaryDirectory(prefix="siamese-bench-") as work:
        work = Path(work)
        if args.jpeg_size:
            width, height = (int(x) for x in args.jpeg_size.lower().split("x"))
            metadata = make_large_jpegs(records, args.metadata.parent, work, (width, height))
            records = read_metadata(metadata)[0]
        subset = work / "subset.csv"
        with open(metadata, newline="", encoding="utf-8") as source, open(subset, "w", newline="") as out:
            reader = csv.DictReader(source)
            writer = csv.DictWriter(out, fieldnames=reader.fieldnames)
            writer.writeheader()
            for row in itertools.islice(reader, len(records)):
                if not Path(row["path"]).is_absolute():
                    row["path"] = str(metadata.parent / row["path"])
                writer.writerow(row)

        backbone = get_backbone(args.model)
        started = time.perf_counter()
        embedder = backbone.load()
        load_seconds = time.perf_counter() - started
        workers = args.workers or 4

        started = time.perf_counter()
        pixels = [result for _, result in decode_in_background(records, metadata.parent,
                                                               backbone.input_size, workers, 128)]
        decode_seconds = time.perf_counter() - started
        pixels = [p for p in pixels if not isinstance(p, str)]

        batches = [np.stack(pixels[i:i + args.batch_size])
                   for i in range(0, len(pixels) - args.batch_size + 1, args.batch_size)]
        embedder(batches[0])  # warm-up: graph tracing and memory pools
        raw_rates, pipeline_rates = [], []
        for repeat in range(args.repeats):  # alternate, so a busy moment hits both sides alike
            batch_seconds = []
            for batch in batches:
                started = time.perf_counter()
                embedder(batch)
                batch_seconds.append(time.perf_counter() - started)
            raw_rates.append(args.batch_size * len(batches) / sum(batch_seconds))
            started = time.perf_counter()
            report = extract_vectors(subset, work / f"vectors-{repeat}", model=args.model,
                                     embedder=embedder, batch_size=args.batch_size,
                                     workers=args.workers, progress=False)
            pipeline_rates.append(report.stored / (time.perf_counter() - started))

    raw_rate, pipeline_rate = statistics.median(raw_rates), statistics.median(pipeline_rates)
    ratios = [p / r for p, r in zip(pipeline_rates, raw_rates, strict=True)]
    print(f"model {args.model}, batch {args.batch_size}, {len(pixels)} images"
          f"{' as ' + args.jpeg_size + ' JPEG' if args.jpeg_size else ''}, model load {load_seconds:.1f} s")
    print(f"{'stage':<14}{'images/s':>10}")
    print(f"{'raw model':<14}{raw_rate:>10.1f}   (all batches in memory, median of {args.repeats} repeats)")
    print(f"{'decode only':<14}{len(records) / decode_seconds:>10.1f}   ({workers} threads)")
    print(f"{'pipeline':<14}{pipeline_rate:>10.1f}   (extract_vectors, {report.stored} stored, "
          f"median of {args.repeats})")
    print(f"ratio pipeline / raw model: {pipeline_rate / raw_rate:.2f} (per repeat: "
          f"{', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
