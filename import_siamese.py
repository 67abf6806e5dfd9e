"""Import the original Siamese's vectors (KB, 2017) into a vector store, without re-extracting anything.

    python import_siamese.py OLD_VECTOR_DIR VECTOR_DIR [--metadata CSV] [--model NAME]
                             [--dashes-as-colons] [--batch-size N] [--quiet]

The original layout is OLD_VECTOR_DIR/<YEAR>/<NAME>.npy: one float array per image (2048 values of
Google's 2015 Inception v3 pool_3 layer, our model `inception-v3-2015`), the year only in the folder name,
NAME the urn with every ':' replaced by '-'. Each image becomes an item with that urn, date and year
from the folder, and path `<YEAR>/<NAME>.jpg` (where the original kept the image), plus the columns of
the optional metadata CSV (column `urn` required; `path` and `date` replace ours, a date only when its
year is the folder's; every other column is kept as metadata).

Urns are restored by the rule of siamese.original_names.UrnRestorer: the metadata CSV's urns first (the
only way to restore a urn with a '-' of its own), then names without '-', then KB urns
(ddd:010850436:mpeg21:a0001). Names it cannot decide are not imported but listed, with every file that
is not a vector of the right shape (or not in a year folder), in VECTOR_DIR/import-report.csv.

Files are read one batch at a time, so memory does not grow with the collection; each batch is
committed to the store, and re-running the same command skips what is stored, so an interrupted import
resumes. Fix what the report lists (a --metadata CSV for ambiguous names) and run again to add it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from siamese.backbones import BACKBONES, DEFAULT_BACKBONE
from siamese.cli import Parser, run_command, write_csv_report
from siamese.metadata import Columns, MetadataError, parse_year, read_metadata_columns
from siamese.original_names import UrnRestorer
from siamese.vector_store import MAX_ABS_VALUE, StoreError, VectorStoreWriter, unusable_rows

REPORT_FILE = "import-report.csv"
DEFAULT_DIMENSIONS = 2048  # the original's Inception v3 pool_3
YEAR_FOLDER = re.compile(r"[0-9]{4}")  # as our dates write years (siamese.metadata)


class SiameseImportError(ValueError):
    """The import cannot start (no such folder, unreadable CSV); the message says what to fix."""


@dataclass
class ImportReport:
    """What a run did. `problems` holds (file, urn, reason) for everything not imported, and `notes` the
    same for what was imported with a remark (a guessed urn, a CSV date that disagreed with the folder)."""

    imported: int = 0
    already_stored: int = 0
    total_in_store: int = 0
    problems: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[tuple[str, str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self, vector_dir: Path) -> str:
        text = (f"imported {self.imported} vectors, {self.already_stored} were already stored; "
                f"{self.total_in_store} in {vector_dir}")
        if self.problems:
            kinds = Counter(reason.split(":")[0] for _, _, reason in self.problems)
            text += (f"; {len(self.problems)} files not imported ("
                     + ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
                     + f"), see {vector_dir / REPORT_FILE}")
        if self.notes:
            text += f"; {len(self.notes)} imported with a remark in {vector_dir / REPORT_FILE}"
        return text


def scan(old_dir: Path, problems: list[tuple[str, str, str]]) -> list[tuple[int, str]]:
    """(year, file name) of every .npy file in a year folder, years and names sorted; everything else is
    added to `problems`. Only names are held: 426,777 of them are a few dozen MB."""
    found: list[tuple[int, str]] = []
    for entry in sorted(os.scandir(old_dir), key=lambda entry: entry.name):
        if not entry.is_dir():
            problems.append((entry.name, "", "not in a year folder: files must be in OLD_VECTOR_DIR/<YEAR>/"))
        elif not YEAR_FOLDER.fullmatch(entry.name):
            problems.append((entry.name + "/", "", "not a year folder: folder names must be years "
                                                   "(e.g. 1950); its files are skipped"))
        else:
            for name in sorted(os.listdir(entry.path)):
                relative = f"{entry.name}/{name}"
                if not name.endswith(".npy") or name == ".npy":
                    problems.append((relative, "", "not a .npy file"))
                elif os.path.isdir(os.path.join(entry.path, name)):
                    problems.append((relative, "", "not a .npy file: a folder"))
                else:
                    found.append((int(entry.name), name))
    return found


def read_vector(path: Path, n_dimensions: int) -> np.ndarray | str:
    """The file's vector as float32, or the reason it cannot be one (never an exception)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        return f"bad file: not a readable .npy array ({type(error).__name__}: {str(error)[:100]})"
    if not isinstance(array, np.ndarray):  # an .npz archive
        return "bad file: an .npz archive, not one array"
    if array.dtype.kind != "f":
        return f"bad file: dtype {array.dtype}, expected floats"
    if array.shape != (n_dimensions,):
        return f"bad file: shape {array.shape}, expected ({n_dimensions},)"
    with np.errstate(over="ignore", invalid="ignore"):  # 1e300 becomes inf in float32: refused below
        vector = array.astype(np.float32)
    if unusable_rows(vector[None, :])[0]:
        return f"bad file: NaN, infinite or out-of-range values (beyond {MAX_ABS_VALUE:g})"
    return vector


def write_report(vector_dir: Path, report: ImportReport) -> None:
    """VECTOR_DIR/import-report.csv: file, urn, imported (yes/no), reason; replaced atomically."""
    write_csv_report(vector_dir / REPORT_FILE, ["file", "urn", "imported", "reason"],
                     [*((file, urn, "no", reason) for file, urn, reason in report.problems),
                      *((file, urn, "yes", reason) for file, urn, reason in report.notes)])


def _items(files: list[tuple[int, str]], restorer: UrnRestorer, rows: dict[str, Columns],
           report: ImportReport) -> Iterator[tuple[str, dict | None]]:
    """(relative file, item) for every file; the item is None (and the reason reported) when the file's
    urn cannot be restored."""
    for year, name in files:
        relative, stem = f"{year}/{name}", name[:-len(".npy")]
        restored = restorer.restore(stem)
        if restored.urn is None:
            report.problems.append((relative, "", restored.note))
            yield relative, None
            continue
        row = rows.get(restored.urn)
        item = {"urn": restored.urn, "date": str(year), "year": year,
                "path": row.path if row and row.path else f"{year}/{stem}.jpg",
                "metadata": dict(row.metadata) if row else {}}
        if restored.note:
            report.notes.append((relative, restored.urn, restored.note))
        if row and row.date:
            try:
                same_year = parse_year(row.date) == year
            except ValueError:
                same_year = False
            if same_year:
                item["date"] = row.date
            else:
                report.notes.append((relative, restored.urn, f"the CSV's date {row.date!r} is not of the "
                                                              f"folder's year {year}; the folder's is kept"))
        yield relative, item


def import_siamese(old_dir: str | os.PathLike, vector_dir: str | os.PathLike,
                   metadata_csv: str | os.PathLike | None = None, model: str = DEFAULT_BACKBONE,
                   n_dimensions: int | None = None, dashes_as_colons: bool = False,
                   batch_size: int = 1024, progress: bool = True) -> ImportReport:
    """Import every vector of the original layout in `old_dir` that the store does not hold yet.

    `n_dimensions`: None takes the model's (2048 for an unknown model name). Raises SiameseImportError or
    StoreError when the import cannot start; a bad file or name only goes to the report.
    """
    started = time.perf_counter()
    old_dir, vector_dir = Path(old_dir), Path(vector_dir)
    if not old_dir.is_dir():
        raise SiameseImportError(f"no such folder: {old_dir}")
    if batch_size < 1:
        raise SiameseImportError(f"batch_size must be a positive whole number, got {batch_size}")
    if n_dimensions is None:
        n_dimensions = BACKBONES[model].n_dimensions if model in BACKBONES else DEFAULT_DIMENSIONS
    try:
        csv_rejects: list = []
        rows = read_metadata_columns(metadata_csv, rejected=csv_rejects) if metadata_csv is not None else {}
    except MetadataError as error:
        raise SiameseImportError(str(error)) from None
    restorer = UrnRestorer(rows, dashes_as_colons)
    report = ImportReport()
    report.problems.extend((str(metadata_csv), row.urn, f"metadata CSV: line {row.line}: {row.reason}")
                           for row in csv_rejects)
    files = scan(old_dir, report.problems)
    with VectorStoreWriter(vector_dir, model, n_dimensions) as writer:
        # urn -> year of what is stored (to resume), and urn -> the file it came from in this run
        year_of = dict(zip(writer.store.urns, writer.store.years().tolist(), strict=True))
        source_of: dict[str, str] = {}
        vectors: list[np.ndarray] = []
        items: list[dict] = []

        def flush() -> None:
            if items:
                writer.append(np.stack(vectors), items)
                report.imported += len(items)
                vectors.clear()
                items.clear()

        try:
            with tqdm(total=len(files), unit="file", desc="importing", disable=not progress,
                      file=sys.stderr) as bar:
                for relative, item in _items(files, restorer, rows, report):
                    bar.update()
                    if item is None:
                        continue
                    urn = item["urn"]
                    if urn in source_of or (urn in year_of and year_of[urn] != item["year"]):
                        first = source_of.get(urn) or f"year {year_of[urn]}"
                        report.problems.append((relative, urn, f"duplicate urn: already imported from "
                                                               f"{first}; the first is kept"))
                        continue
                    if urn in year_of:
                        report.already_stored += 1
                        continue
                    vector = read_vector(old_dir / relative, n_dimensions)
                    if isinstance(vector, str):
                        report.problems.append((relative, urn, vector))
                        continue
                    source_of[urn] = relative
                    vectors.append(vector)
                    items.append(item)
                    if len(items) >= batch_size:
                        flush()
            flush()
        finally:
            write_report(vector_dir, report)
        report.total_in_store = writer.store.count
    report.seconds = time.perf_counter() - started
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="import_siamese.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Import the original Siamese's vector folder (OLD_VECTOR_DIR/<YEAR>/<NAME>.npy) into "
                    "a vector store.", epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("old_dir", metavar="OLD_VECTOR_DIR", help="the original's vector folder")
    parser.add_argument("vector_dir", metavar="VECTOR_DIR", help="the vector store to create or extend")
    parser.add_argument("--metadata", metavar="CSV",
                        help="a CSV with a urn column: restores urns with '-' and joins its other columns")
    parser.add_argument("--model", default=DEFAULT_BACKBONE,
                        help=f"the model the vectors come from (default: {DEFAULT_BACKBONE}, the original's)")
    parser.add_argument("--dashes-as-colons", action="store_true",
                        help="import names that are not KB urns as the original read them (every '-' a "
                             "':') instead of leaving them out")
    parser.add_argument("--batch-size", type=int, default=1024, metavar="N",
                        help="vectors per commit (default: 1024)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> int:
        report = import_siamese(args.old_dir, args.vector_dir, args.metadata, model=args.model,
                                dashes_as_colons=args.dashes_as_colons, batch_size=args.batch_size,
                                progress=not args.quiet)
        print(report.summary(Path(args.vector_dir)))
        return 0

    return run_command("import_siamese.py", command, (SiameseImportError, StoreError, OSError),
                       "what was imported is kept, run the same command again to resume")


if __name__ == "__main__":
    sys.exit(main())
