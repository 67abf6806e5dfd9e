"""Turn a collection's images into feature vectors: the first step of the Siamese pipeline.

    python extract_vectors.py METADATA_CSV VECTOR_DIR [--images-root DIR] [--model NAME]
                              [--weights PATH] [--batch-size N] [--workers N]
                              [--ray [ADDRESS] [--ray-actors N] [--ray-cpus-per-actor N]]

Reads the metadata CSV (columns urn, path, date, and any others as metadata), decodes every image in a
pool of threads while the model embeds the previous batch, and appends each batch to the vector store as
it is done. Re-running skips what is stored, so an interrupted run (Ctrl-C, kill -9, a crash) is resumed
by running the same command again; it loses at most the batch in flight. Images that cannot be read are
listed with the reason in VECTOR_DIR/rejects.csv and do not stop the run.

With --ray, model actors on a Ray cluster decode and embed the images (siamese/ray_extract.py; Ray is
imported only then): this process still reads the CSV and is the store's one writer, so the store, the
rejects and resuming are the same. The images must be at the same path on every node
(docs/scale-out.md).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from siamese.backbones import (
    BACKBONES,
    DEFAULT_BACKBONE,
    BackboneError,
    Embedder,
    get_backbone,
    show_tensorflow_logs,
)
from siamese.cli import Parser, add_max_pixels_option, run_command, write_csv_report
from siamese.images import INPUT_MODES, check_input_mode, model_input_or_reason, set_max_pixels
from siamese.metadata import MetadataError, Record, read_metadata
from siamese.vector_store import StoreError, VectorStoreWriter, unusable_rows

REJECTS_FILE = "rejects.csv"


@dataclass
class ExtractionReport:
    """What a run did; `rejects` holds (urn, path, reason) for every row or image that was skipped."""

    stored: int = 0
    already_stored: int = 0
    total_in_store: int = 0
    rejects: list[tuple[str, str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self, vector_dir: Path) -> str:
        rate = self.stored / self.seconds if self.seconds > 0 else 0.0
        text = (f"stored {self.stored} new vectors ({rate:.1f} images/s), {self.already_stored} were "
                f"already stored; {self.total_in_store} in {vector_dir}")
        if self.rejects:
            text += f"; {len(self.rejects)} rejected, see {vector_dir / REJECTS_FILE}"
        return text


def decode_in_background(records: Iterable[Record], images_root: Path, size: tuple[int, int],
                         workers: int, lookahead: int, input_mode: str = "colour"
                         ) -> Iterator[tuple[Record, np.ndarray | str]]:
    """Yield (record, pixels) or (record, reason) in order, decoding up to `lookahead` ahead.

    Pillow releases the GIL while it decodes and resizes, so threads decode the next batch while the
    model (which also releases it) embeds the current one.
    """
    def decode(record: Record) -> np.ndarray | str:
        return model_input_or_reason(record.resolve(images_root), size, input_mode)

    pending: collections.deque[tuple[Record, Future]] = collections.deque()
    records = iter(records)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        for record in records:
            pending.append((record, pool.submit(decode, record)))
            if len(pending) >= lookahead:
                done_record, future = pending.popleft()
                yield done_record, future.result()
        while pending:
            done_record, future = pending.popleft()
            yield done_record, future.result()


def write_rejects(vector_dir: Path, rejects: list[tuple[str, str, str]]) -> None:
    """The rejects of the latest run, as CSV (urn, path, reason); replaced atomically."""
    write_csv_report(vector_dir / REJECTS_FILE, ["urn", "path", "reason"], rejects)


def commit_batch(store: VectorStoreWriter, records: Sequence[Record], vectors: np.ndarray,
                 report: ExtractionReport) -> None:
    """Store one embedded batch (a commit: a crash after this cannot lose it) and count it in `report`.

    A row the model gave NaN, infinite or out-of-range values for is rejected instead: a model gone
    wrong must not poison the store. Shared with the extraction on Ray (siamese/ray_extract.py), so
    that both store and reject alike.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    unusable = unusable_rows(vectors)
    for record in (record for record, bad in zip(records, unusable, strict=True) if bad):
        report.rejects.append((record.urn, record.path,
                               "the model gave NaN, infinite or out-of-range values"))
    keep = [record.to_item() for record, bad in zip(records, unusable, strict=True) if not bad]
    if keep:
        store.append(vectors[~unusable], keep)
    report.stored += len(keep)


def extract_vectors(metadata_csv: str | os.PathLike, vector_dir: str | os.PathLike,
                    images_root: str | os.PathLike | None = None, model: str = DEFAULT_BACKBONE,
                    weights: str | os.PathLike | None = None, batch_size: int = 64,
                    workers: int | None = None, embedder: Embedder | None = None,
                    progress: bool = True, input_mode: str = "colour") -> ExtractionReport:
    """Extract the vectors of every image in the CSV that the store does not hold yet.

    `input_mode` (siamese.images.INPUT_MODES): how the images are shown to the model, recorded in the
    store (a store holds one; uploads and queries against it are shown the same way).

    `embedder` replaces the model (already loaded, e.g. shared between calls in one process); it
    must be the named model's.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    started = time.perf_counter()
    metadata_csv = Path(metadata_csv)
    vector_dir = Path(vector_dir)
    images_root = Path(images_root) if images_root is not None else metadata_csv.parent
    backbone = get_backbone(model)
    records, rejected_rows = read_metadata(metadata_csv)
    report = ExtractionReport(rejects=[(row.urn, row.path, f"CSV line {row.line}: {row.reason}")
                                       for row in rejected_rows])
    workers = workers or min(8, (os.cpu_count() or 1) + 2)

    check_input_mode(input_mode)
    with VectorStoreWriter(vector_dir, backbone.name, backbone.n_dimensions, input_mode) as store:
        todo = [record for record in records if record.urn not in store.urns]
        report.already_stored = len(records) - len(todo)
        write_rejects(vector_dir, report.rejects)
        if todo and embedder is None:
            embedder = backbone.load(weights)
        batch_pixels: list[np.ndarray] = []
        batch_records: list[Record] = []
        rejects_written = len(report.rejects)

        def flush() -> None:
            nonlocal rejects_written
            if batch_records:
                commit_batch(store, batch_records, embedder(np.stack(batch_pixels)), report)
                batch_pixels.clear()
                batch_records.clear()
            if len(report.rejects) != rejects_written:
                write_rejects(vector_dir, report.rejects)
                rejects_written = len(report.rejects)

        with tqdm(total=len(todo), unit="img", desc="extracting", disable=not progress,
                  file=sys.stderr) as bar:
            decoded = decode_in_background(todo, images_root, backbone.input_size, workers,
                                           lookahead=2 * batch_size, input_mode=input_mode)
            for record, result in decoded:
                if isinstance(result, str):
                    report.rejects.append((record.urn, record.path, result))
                    bar.update(1)
                    continue
                batch_pixels.append(result)
                batch_records.append(record)
                if len(batch_records) == batch_size:
                    bar.update(len(batch_records))
                    flush()
                    bar.set_postfix(stored=report.stored, rejected=len(report.rejects))
            bar.update(len(batch_records))
            flush()
        report.total_in_store = len(store.store)
    report.seconds = time.perf_counter() - started
    return report


def build_parser() -> argparse.ArgumentParser:
    models = "; ".join(f"{b.name}: {b.description}" for b in BACKBONES.values())
    parser = Parser(
        prog="extract_vectors.py",
        description="Extract one feature vector per image into a vector directory (resumable: run "
                    "again to continue; images already stored are skipped).",
        epilog=f"Models: {models}.")
    parser.add_argument("metadata_csv", metavar="METADATA_CSV",
                        help="CSV with columns urn, path, date (YYYY, YYYY-MM or YYYY-MM-DD); other "
                             "columns are kept as metadata")
    parser.add_argument("vector_dir", metavar="VECTOR_DIR", help="the vector store to create or extend")
    parser.add_argument("--images-root", metavar="DIR",
                        help="folder that relative paths in the CSV start from (default: the CSV's folder)")
    parser.add_argument("--model", default=DEFAULT_BACKBONE, choices=sorted(BACKBONES),
                        help=f"feature model (default: {DEFAULT_BACKBONE}); recorded in the store")
    parser.add_argument("--input", dest="input_mode", default="colour", choices=INPUT_MODES,
                        help="how images are shown to the model, recorded in the store: colour (as they "
                             "are; default), grey (luminance, levels stretched: another paper, ink or "
                             "scanner looks the same), scan (grey, then halftone screens and dither "
                             "smoothed away: for scanned print; docs/scan-copies.md)")
    parser.add_argument("--weights", metavar="PATH",
                        help="load the model's weights from this local file instead (.h5/.keras; for "
                             "mobilenet-v1 its frozen .pb graph)")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N",
                        help="images per model call and per commit to the store (default: 64)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="image-decoding threads (default: cores + 2, at most 8); not with --ray")
    parser.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                        help="decode and embed on a Ray cluster (pip install \".[ray]\"); this process "
                             "stays the store's one writer. Alone: the cluster RAY_ADDRESS names, else the "
                             "one `ray start` started on this machine, else a new one here for this run; "
                             "ADDRESS: 'local' (always a new one here), HOST:6379, or ray://HOST:10001. "
                             "Every node must see the images at the same path")
    parser.add_argument("--ray-actors", type=int, metavar="N",
                        help="with --ray: model actors, each loading the model once (default: one per "
                             "GPU, else as many as the nodes' CPUs hold)")
    parser.add_argument("--ray-cpus-per-actor", type=int, metavar="N",
                        help="with --ray: CPU cores each actor reserves, for its model and its "
                             "decoding threads (default: without GPUs up to 4, fewer on smaller nodes, "
                             "or shared out to fit --ray-actors; with GPUs the node's CPUs per GPU)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_max_pixels_option(parser)
    parser.add_argument("--verbose", action="store_true", help="TensorFlow's own log lines too")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    for option, value in (("--ray-actors", args.ray_actors),
                          ("--ray-cpus-per-actor", args.ray_cpus_per_actor)):
        if value is not None and args.ray is None:
            parser.error(f"{option} only applies with --ray")
        if value is not None and value < 1:
            parser.error(f"{option} must be at least 1")
    if args.ray is not None and args.workers is not None:
        parser.error("--workers is for extraction in this process; with --ray each actor decodes with "
                     "its own cores (--ray-cpus-per-actor)")
    if args.weights is not None and not Path(args.weights).is_file():
        parser.error(f"--weights: no such file: {args.weights}")
    if args.images_root is not None and not Path(args.images_root).is_dir():
        parser.error(f"--images-root: no such folder: {args.images_root}")
    if args.verbose:
        show_tensorflow_logs()
    set_max_pixels(args.max_pixels)

    errors: tuple[type[BaseException], ...] = (MetadataError, StoreError, BackboneError, ValueError)
    if args.ray is not None:
        from siamese.ray_extract import RayExtractionError  # Ray itself is imported only when it runs

        errors += (RayExtractionError,)

    def command() -> int:
        if args.ray is not None:
            from siamese.ray_extract import extract_vectors_on_ray

            report = extract_vectors_on_ray(
                args.metadata_csv, args.vector_dir, images_root=args.images_root, model=args.model,
                weights=args.weights, batch_size=args.batch_size, address=args.ray or None,
                n_actors=args.ray_actors, cpus_per_actor=args.ray_cpus_per_actor,
                progress=not args.quiet, input_mode=args.input_mode, max_pixels=args.max_pixels)
        else:
            report = extract_vectors(args.metadata_csv, args.vector_dir, images_root=args.images_root,
                                     model=args.model, weights=args.weights, batch_size=args.batch_size,
                                     workers=args.workers, progress=not args.quiet,
                                     input_mode=args.input_mode)
        print(report.summary(Path(args.vector_dir)))
        return 0

    return run_command("extract_vectors.py", command, errors,
                       "what was stored is kept, run the same command again to resume")


if __name__ == "__main__":
    sys.exit(main())
