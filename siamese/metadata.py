"""The metadata CSV: which images form a collection, where they are, and when they were made.

One row per image with the columns `urn`, `path` and `date`; every other column is kept as metadata
(title, newspaper, source_url, ...). A bad row does not stop a run over 400,000 images: it comes back
as a rejected row with the reason, so the researcher can fix the CSV and run again.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REQUIRED_COLUMNS = ("urn", "path", "date")
_DATE_PATTERN = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


class MetadataError(ValueError):
    """The CSV as a whole cannot be used (missing file, missing columns, not UTF-8)."""


@dataclass(frozen=True)
class Record:
    """One image of the collection, as the CSV describes it."""

    urn: str
    path: str
    date: str
    year: int
    metadata: dict[str, str] = field(default_factory=dict)

    def resolve(self, images_root: Path) -> Path:
        """The image file: `path` relative to the images root, or absolute."""
        return Path(self.path) if os.path.isabs(self.path) else images_root / self.path

    def to_item(self) -> dict:
        """The JSON-serialisable form kept in the vector store."""
        return {"urn": self.urn, "date": self.date, "year": self.year, "path": self.path,
                "metadata": dict(self.metadata)}


@dataclass(frozen=True)
class RejectedRow:
    """A CSV row that cannot become a record, and why."""

    line: int
    urn: str
    path: str
    reason: str


def parse_year(date: str) -> int:
    """The year of a `YYYY`, `YYYY-MM` or `YYYY-MM-DD` date; ValueError for anything else."""
    match = _DATE_PATTERN.match(date.strip())
    if not match:
        raise ValueError(f"date {date!r} is not YYYY, YYYY-MM or YYYY-MM-DD")
    year, month, day = match.groups()
    try:
        datetime.date(int(year), int(month or 1), int(day or 1))
    except ValueError as error:
        raise ValueError(f"date {date!r} is not a real date ({error})") from None
    return int(year)


@contextlib.contextmanager
def _csv_rows(csv_path: Path, required: tuple[str, ...]) -> Iterator[csv.DictReader]:
    """The CSV's rows as dicts, header names stripped; MetadataError for a file that is unusable as a
    whole (missing, no such columns, not UTF-8, not CSV). The one place a metadata CSV is opened."""
    if not csv_path.is_file():
        raise MetadataError(f"metadata CSV not found: {csv_path}")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [name.strip() for name in (reader.fieldnames or [])]
            missing = [name for name in required if name not in columns]
            if missing:
                raise MetadataError(
                    f"{csv_path}: no {', '.join(map(repr, missing))} column (missing column(s): "
                    f"{', '.join(missing)}); the CSV needs a header row with {', '.join(required)} (other "
                    f"columns are kept as metadata), found {columns or 'no header'}")
            reader.fieldnames = columns
            yield reader
    except UnicodeDecodeError as error:
        raise MetadataError(f"{csv_path}: not UTF-8 text ({error})") from None
    except csv.Error as error:
        raise MetadataError(f"{csv_path}: not a readable CSV ({error})") from None


def read_metadata(csv_path: str | os.PathLike) -> tuple[list[Record], list[RejectedRow]]:
    """Read the CSV into records, plus the rows that were rejected (with their reasons).

    Raises MetadataError when the file itself is unusable; a duplicate urn keeps its first row.
    """
    records: list[Record] = []
    rejected: list[RejectedRow] = []
    seen: set[str] = set()
    with _csv_rows(Path(csv_path), REQUIRED_COLUMNS) as reader:
        for row in reader:
            line = reader.line_num
            urn = (row.get("urn") or "").strip()
            path = (row.get("path") or "").strip()
            date = (row.get("date") or "").strip()
            if None in row:
                rejected.append(RejectedRow(line, urn, path, "more fields than the header has"))
                continue
            if not urn:
                rejected.append(RejectedRow(line, urn, path, "empty urn"))
                continue
            if not path:
                rejected.append(RejectedRow(line, urn, path, "empty path"))
                continue
            if urn in seen:
                rejected.append(RejectedRow(line, urn, path, "duplicate urn (the first row is kept)"))
                continue
            try:
                year = parse_year(date)
            except ValueError as error:
                rejected.append(RejectedRow(line, urn, path, str(error)))
                continue
            seen.add(urn)
            extra = {key: (value or "") for key, value in row.items() if key not in REQUIRED_COLUMNS}
            records.append(Record(urn, path, date, year, extra))
    return records, rejected


@dataclass(frozen=True)
class Columns:
    """A row of a CSV that only names urns (import_siamese.py --metadata): what it replaces of an
    item (path, date; None when empty or absent) and its other columns."""

    path: str | None
    date: str | None
    metadata: dict[str, str]


def read_metadata_columns(csv_path: str | os.PathLike) -> dict[str, Columns]:
    """{urn: its columns} of a CSV where only `urn` is required; the first row of a urn is kept."""
    rows: dict[str, Columns] = {}
    with _csv_rows(Path(csv_path), ("urn",)) as reader:
        for row in reader:
            urn = (row.get("urn") or "").strip()
            if not urn or urn in rows:
                continue
            values = {name: (value or "").strip() for name, value in row.items() if name is not None}
            rows[urn] = Columns(values.pop("path", "") or None, values.pop("date", "") or None,
                                {name: value for name, value in values.items() if name != "urn"})
    return rows
