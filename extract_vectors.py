"""Turn a collection's images into feature vectors: the first step of the Siamese pipeline.

    python extract_vectors.py METADATA_CSV VECTOR_DIR [--images-root DIR] [--model NAME]
                              [--weights PATH] [--batch-size N] [--workers N]

Reads the metadata CSV (columns urn, path, date, and any others as metadata), decodes every image in a
pool of threads while the model embeds the previous batch, and appends each batch to the vector store as
it is done. Re-running skips what is stored, so an interrupted run (Ctrl-C, kill -9, a crash) is resumed
by running the same command again; it loses at most the batch in flight. Images that cannot be read are
listed with the reason in VECTOR_DIR/rejects.csv and do not stop the run.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from collections.abc import Iterable, Iterator
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
from siamese.images import INPUT_MODES, ImageRejected, check_input_mode, load_model_input, set_max_pixels
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
        try:
            return load_model_input(record.resolve(images_root), size, input_mode)
        except ImageRejected as error:
            return str(error)
        except MemoryError:
            return "image too large to decode in memory"

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
                vectors = np.asarray(embedder(np.stack(batch_pixels)), dtype=np.float32)
                unusable = unusable_rows(vectors)  # a model gone wrong must not poison the store
                for record in (record for record, bad in zip(batch_records, unusable, strict=True) if bad):
                    report.rejects.append((record.urn, record.path, "the model gave NaN, infinite or "
                                                                    "out-of-range values"))
                keep = [record.to_item() for record, bad in zip(batch_records, unusable, strict=True)
                        if not bad]
                if keep:
                    store.append(vectors[~unusable], keep)
                report.stored += len(keep)
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
                        help="image-decoding threads (default: cores + 2, at most 8)")
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
    if args.weights is not None and not Path(args.weights).is_file():
        parser.error(f"--weights: no such file: {args.weights}")
    if args.images_root is not None and not Path(args.images_root).is_dir():
        parser.error(f"--images-root: no such folder: {args.images_root}")
    if args.verbose:
        show_tensorflow_logs()
    set_max_pixels(args.max_pixels)

    def command() -> int:
        report = extract_vectors(args.metadata_csv, args.vector_dir, images_root=args.images_root,
                                 model=args.model, weights=args.weights, batch_size=args.batch_size,
                                 workers=args.workers, progress=not args.quiet, input_mode=args.input_mode)
        print(report.summary(Path(args.vector_dir)))
        return 0

    return run_command("extract_vectors.py", command, (MetadataError, StoreError, BackboneError, ValueError),
                       "what was stored is kept, run the same command again to resume")


if __name__ == "__main__":
    sys.exit(main())
