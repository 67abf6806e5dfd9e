"""Make the small JPEGs the web page shows: at most 300 px high, aspect kept, one per image.

    python make_thumbnails.py METADATA_CSV THUMBNAIL_DIR [--images-root DIR] [--max-height 300]
                              [--workers N] [--quality 85]

Runs over all cores, skips thumbnails that exist, and writes each one atomically (temp file, then
rename), so an interrupted run is resumed by running it again and never leaves a broken JPEG behind.
Images that cannot be read are listed with the reason in THUMBNAIL_DIR/rejects.csv.
"""

from __future__ import annotations

import io
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from siamese import images
from siamese.cli import Parser, add_max_pixels_option, run_command, write_csv_report
from siamese.images import ImageRejected, open_rgb, set_max_pixels
from siamese.metadata import MetadataError, read_metadata
from siamese.thumbnails import thumbnail_filename
from siamese.vector_store import remove_stale_temporaries, write_atomically

REJECTS_FILE = "rejects.csv"
__all__ = ["make_thumbnail", "make_thumbnails", "thumbnail_filename"]  # the name rule: siamese/thumbnails.py


def make_thumbnail(source: Path, target: Path, max_height: int = 300, quality: int = 85) -> bool:
    """Write `target` from `source` unless it exists; True when a thumbnail was written."""
    if target.exists():
        return False
    image = open_rgb(source, draft_size=(max_height * 4, max_height))
    if image.height > max_height:
        width = max(1, round(image.width * max_height / image.height))
        image = image.resize((width, max_height), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, optimize=True, progressive=True)
    write_atomically(target, buffer.getvalue())
    return True


def _work(task: tuple[str, str, str, int, int]) -> tuple[str, str, str | None]:
    urn, source, target, max_height, quality = task
    try:
        written = make_thumbnail(Path(source), Path(target), max_height, quality)
        return urn, "written" if written else "skipped", None
    except ImageRejected as error:
        return urn, "rejected", str(error)
    except OSError as error:
        return urn, "rejected", f"cannot write thumbnail ({error})"


def make_thumbnails(metadata_csv: str | os.PathLike, thumbnail_dir: str | os.PathLike,
                    images_root: str | os.PathLike | None = None, max_height: int = 300,
                    quality: int = 85, workers: int | None = None,
                    progress: bool = True) -> dict[str, int]:
    """Make every missing thumbnail; returns counts of written, skipped and rejected images."""
    if max_height < 1:
        raise ValueError(f"max_height must be a positive number of pixels, got {max_height}")
    if not 1 <= quality <= 95:
        raise ValueError(f"quality must be between 1 and 95, got {quality}")
    metadata_csv = Path(metadata_csv)
    thumbnail_dir = Path(thumbnail_dir)
    root = Path(images_root) if images_root is not None else metadata_csv.parent
    records, rejected_rows = read_metadata(metadata_csv)
    thumbnail_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(thumbnail_dir)  # half-written thumbnails of a killed run
    tasks = [(record.urn, str(record.resolve(root)),
              str(thumbnail_dir / thumbnail_filename(record.urn)), max_height, quality)
             for record in records]
    counts = {"written": 0, "skipped": 0, "rejected": 0}
    rejects = [(row.urn, row.path, f"CSV line {row.line}: {row.reason}") for row in rejected_rows]
    paths = {record.urn: record.path for record in records}
    workers = workers or os.cpu_count() or 1
    pool = Pool(workers, initializer=set_max_pixels, initargs=(images.MAX_PIXELS,))  # also when spawned
    with pool, tqdm(total=len(tasks), unit="img", desc="thumbnails", disable=not progress,
                    file=sys.stderr) as bar:
        for urn, outcome, reason in pool.imap_unordered(_work, tasks, chunksize=32):
            counts[outcome] += 1
            if reason is not None:
                rejects.append((urn, paths[urn], reason))
            bar.update(1)
    write_csv_report(thumbnail_dir / REJECTS_FILE, ["urn", "path", "reason"], sorted(rejects))
    counts["rejected"] = len(rejects)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog="make_thumbnails.py",
        description="Write a JPEG thumbnail (at most --max-height pixels high, aspect kept) for every "
                    "image in the metadata CSV; existing thumbnails are kept, so re-running resumes.")
    parser.add_argument("metadata_csv", metavar="METADATA_CSV", help="CSV with columns urn, path, date")
    parser.add_argument("thumbnail_dir", metavar="THUMBNAIL_DIR", help="folder to write thumbnails to")
    parser.add_argument("--images-root", metavar="DIR",
                        help="folder that relative paths in the CSV start from (default: the CSV's folder)")
    parser.add_argument("--max-height", type=int, default=300, metavar="PX",
                        help="largest thumbnail height in pixels (default: 300); smaller images keep "
                             "their size")
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality 1-95 (default: 85)")
    parser.add_argument("--workers", type=int, metavar="N", help="processes (default: all cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_max_pixels_option(parser)
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.images_root is not None and not Path(args.images_root).is_dir():
        parser.error(f"--images-root: no such folder: {args.images_root}")
    set_max_pixels(args.max_pixels)

    def command() -> int:
        started = time.perf_counter()
        counts = make_thumbnails(args.metadata_csv, args.thumbnail_dir, args.images_root,
                                 args.max_height, args.quality, args.workers, not args.quiet)
        seconds = time.perf_counter() - started
        text = (f"{counts['written']} thumbnails written, {counts['skipped']} already there "
                f"in {seconds:.1f} s")
        if counts["rejected"]:
            text += f"; {counts['rejected']} rejected, see {Path(args.thumbnail_dir) / REJECTS_FILE}"
        print(text)
        return 0

    return run_command("make_thumbnails.py", command, (MetadataError, ValueError, OSError),
                       "finished thumbnails are kept, run again to resume")


if __name__ == "__main__":
    sys.exit(main())
