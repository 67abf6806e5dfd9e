"""The metadata CSV: which images form a collection, where they are, and when they were made.

One row per image with the columns `urn`, `path` and `date`; every other column is kept as metadata
(title, newspaper, source_url, ...). A bad row does not stop a run over 400,000 images: it comes back
as a rejected row with its line and the reason, so the researcher can fix the CSV and run again; and
no row takes others with it (an unbalanced quote, an overlong field: `csv_rows`).
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import os
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

REQUIRED_COLUMNS = ("urn", "path", "date")
_DATE_PATTERN = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


class MetadataError(ValueError):
    """The CSV as a whole cannot be used (missing file, missing columns, not UTF-8)."""


def resolve_image_path(path: str, images_root: Path) -> Path:
    """An image file named in the metadata: `path` relative to the images root, or absolute."""
    return Path(path) if os.path.isabs(path) else images_root / path


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
        return resolve_image_path(self.path, images_root)

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


FIELD_LIMIT = 131_072
"""Characters in one field (csv's own default limit, checked here): a longer field rejects its row."""
MAX_RECORD_LINES = 20
"""Physical lines one row may span (a quoted title with newlines); a quote left open longer is refused."""
_CSV_NO_LIMIT = 2**31 - 1  # csv.field_size_limit takes a C long: csv itself never aborts a file
_SHOWN = 200  # characters of a field kept in a rejected row's urn and path
_UNBALANCED = 'unbalanced quote (") opened here: {}; the rows after it were not swallowed'


class CsvRow(NamedTuple):
    """One row of a metadata CSV as `csv_rows` reads it.

    `line`: the physical line it starts on (the header is line 1); `lines`: how many physical lines it
    spans (more than one for a quoted field with newlines). `values`: header name -> value, like
    csv.DictReader's (None for a missing field, the key None for the fields past the header's).
    `problem`: None for a readable row, else why the row was not read (an unbalanced quote, an overlong
    field); the row is then rejected and its `values` are what its first line holds.
    """

    line: int
    lines: int
    values: dict
    problem: str | None


class _QuoteLeftOpen(Exception):
    """Raised through csv.reader by _Lines: the row being read cannot be one row."""


class _Lines:
    """The CSV's physical lines as csv.reader takes them: numbered, with lines handed back (`again`) to
    be read once more, and the lines of the row being read in `row` ((number, text) pairs).

    A row may go on past its first line only while it looks like one row: at most `max_lines` lines,
    no later line that reads as a whole row of `width` fields, and not past the end of the file.
    """

    def __init__(self, handle) -> None:
        self._handle = handle
        self._again: deque[tuple[int, str]] = deque()
        self.count = 0  # physical lines read from the file
        self.row: list[tuple[int, str]] = []
        self.width = 0  # fields of the header; 0: any field count
        self.max_lines = 1
        self.delimiter = ","  # the header's: ',' or, for a header with none, ';' or a tab

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self._again:
            number, text = self._again.popleft()
        else:
            try:
                text = next(self._handle)
            except StopIteration:
                if self.row:
                    raise _QuoteLeftOpen("the file ends before it is closed") from None
                raise
            self.count += 1
            number = self.count
        row = self.row
        row.append((number, text))
        if len(row) > 1:
            if len(row) > self.max_lines:
                raise _QuoteLeftOpen(f"not closed within {self.max_lines} lines")
            if self.width and len(_fields_alone(text, self.delimiter)) == self.width:
                raise _QuoteLeftOpen(f"line {number} reads as a row of its own")
        return text

    def again(self, lines: list[tuple[int, str]]) -> None:
        self._again.extendleft(reversed(lines))

    @property
    def pending(self) -> int:
        return len(self._again)


def _fields_alone(text: str, delimiter: str = ",") -> list[str]:
    """The fields of one physical line read on its own (a quote it opens ends with the line)."""
    try:
        return next(csv.reader((text,), delimiter=delimiter), [])
    except csv.Error:  # a NUL before Python 3.11
        return text.rstrip("\r\n").split(delimiter)


def _shown(value: str | None) -> str | None:
    return value if value is None or len(value) <= _SHOWN else value[:_SHOWN] + "..."


def _rows(lines: _Lines, names: list[str], csv_path: Path) -> Iterator[CsvRow]:
    """The rows after the header; every physical line is a row, part of one, or blank (checked)."""
    width = len(names)
    reader = csv.reader(lines, delimiter=lines.delimiter)
    expected = lines.count + 1  # the line after the header
    while True:
        lines.row = row = []
        problem = None
        try:
            fields = next(reader)
        except StopIteration:
            break
        except (_QuoteLeftOpen, csv.Error) as error:
            if not row:
                raise
            problem = (_UNBALANCED.format(error) if isinstance(error, _QuoteLeftOpen)
                       else f"not readable as CSV ({error})")
            lines.again(row[1:])  # read again: they are rows of their own
            del row[1:]
            fields = [_shown(value) for value in _fields_alone(row[0][1], lines.delimiter)]
            reader = csv.reader(lines, delimiter=lines.delimiter)
        if row[0][0] != expected:
            raise MetadataError(f"{csv_path}: internal check failed: line {row[0][0]} was read where "
                                f"line {expected} was expected; please report this with the CSV")
        expected += len(row)
        if not fields and problem is None:
            continue  # a blank line
        if problem is None and (len(row) > 1 or len(row[0][1]) > FIELD_LIMIT):
            for index, value in enumerate(fields):
                if len(value) > FIELD_LIMIT:
                    name = repr(names[index]) if index < width else f"{index + 1} (past the header)"
                    problem = (f"field {name} is {len(value):,} characters long, over the limit of "
                               f"{FIELD_LIMIT:,}")
                    fields = [_shown(value) for value in fields]
                    break
        values = dict(zip(names, fields, strict=False))
        if len(fields) > width:
            values[None] = fields[width:]
        elif len(fields) < width:
            values.update((name, None) for name in names[len(fields):])
        yield CsvRow(row[0][0], len(row), values, problem)
    if expected != lines.count + 1 or lines.pending:
        raise MetadataError(f"{csv_path}: internal check failed: {lines.count} lines read, "
                            f"{expected - 1} accounted for; please report this with the CSV")


def _other_delimiter(header: str) -> str:
    """The delimiter of a header line with no comma: ';' (what spreadsheets write where the comma is the
    decimal sign, as in the Netherlands) or a tab, whichever it has more of; ',' when neither."""
    counts = {delimiter: header.count(delimiter) for delimiter in (";", "\t")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _required_named(required: tuple[str, ...], columns: list[str]) -> list[str]:
    """The header's names, a required column written in other case (URN, Path, Date) named as required
    (a column named exactly so wins); other columns keep their names."""
    named = list(columns)
    for name in required:
        if name not in named:
            for index, column in enumerate(named):
                if column.lower() == name and column not in required:
                    named[index] = name
                    break
    return named


@contextlib.contextmanager
def csv_rows(csv_path: str | os.PathLike, required: tuple[str, ...]) -> Iterator[Iterator[CsvRow]]:
    """The CSV's rows (`CsvRow`s), header names stripped; MetadataError for a file that is unusable as a
    whole (missing, a folder, no such columns, not UTF-8, a header left inside a quote). The one place a
    metadata CSV is opened. Fields are separated by commas, or by semicolons or tabs when the header
    has no comma; the required columns may be written in any case (URN, Path, Date).

    No row swallows others: a quote left open (a row that would go on through lines that read as rows
    of their own, past MAX_RECORD_LINES lines, or to the end of the file) rejects the line that opened
    it, and the lines after it are read as rows; a field over FIELD_LIMIT characters rejects its row.
    Every physical line is accounted for (a row, part of a quoted row, a rejected row, a blank line).
    """
    csv_path = Path(csv_path)
    if csv_path.is_dir():
        raise MetadataError(f"{csv_path} is a folder; give the metadata CSV file itself (a header row "
                            f"with {', '.join(required)})")
    if not csv_path.is_file():
        raise MetadataError(f"metadata CSV not found: {csv_path}")
    if csv.field_size_limit() < _CSV_NO_LIMIT:
        csv.field_size_limit(_CSV_NO_LIMIT)  # process-wide; FIELD_LIMIT is checked row by row instead
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            lines = _Lines(handle)
            try:
                header = next(csv.reader(lines), [])
            except _QuoteLeftOpen:
                raise MetadataError(
                    f'{csv_path}: the header row (line 1) opens a quote (") that it does not close; the '
                    f"header must be one line with {', '.join(required)}") from None
            if len(header) == 1 and not set(required) <= {header[0].strip()}:
                lines.delimiter = _other_delimiter("".join(text for _, text in lines.row))
                header = _fields_alone("".join(text for _, text in lines.row), lines.delimiter)
            columns = _required_named(required, [name.strip() for name in header])
            missing = [name for name in required if name not in columns]
            if missing:
                raise MetadataError(
                    f"{csv_path}: no {', '.join(map(repr, missing))} column (missing column(s): "
                    f"{', '.join(missing)}); the CSV needs a header row with {', '.join(required)} (other "
                    f"columns are kept as metadata), found {columns or 'no header'}")
            lines.width, lines.max_lines = len(columns), MAX_RECORD_LINES
            yield _rows(lines, columns, csv_path)
    except UnicodeDecodeError as error:
        raise MetadataError(f"{csv_path}: not UTF-8 text ({error})") from None
    except csv.Error as error:
        raise MetadataError(f"{csv_path}: not a readable CSV ({error})") from None


def read_metadata(csv_path: str | os.PathLike) -> tuple[list[Record], list[RejectedRow]]:
    """Read the CSV into records, plus the rows that were rejected (with their line and reason).

    Raises MetadataError when the file itself is unusable; a duplicate urn keeps its first row. A row
    never swallows others (see `csv_rows`): an unbalanced quote or an overlong field is a rejected row.
    """
    records: list[Record] = []
    rejected: list[RejectedRow] = []
    seen: set[str] = set()
    with csv_rows(csv_path, REQUIRED_COLUMNS) as rows:
        for line, _, row, problem in rows:
            urn = (row.get("urn") or "").strip()
            path = (row.get("path") or "").strip()
            date = (row.get("date") or "").strip()
            if problem is not None:
                rejected.append(RejectedRow(line, urn, path, problem))
                continue
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


def read_metadata_columns(csv_path: str | os.PathLike,
                          rejected: list[RejectedRow] | None = None) -> dict[str, Columns]:
    """{urn: its columns} of a CSV where only `urn` is required; the first row of a urn is kept.

    `rejected`, when given, gets the rows that were not used: an unbalanced quote or an overlong field
    (see `csv_rows`; the rows after such a line are still read), an empty urn, a urn already seen.
    """
    columns: dict[str, Columns] = {}
    with csv_rows(csv_path, ("urn",)) as rows:
        for line, _, row, problem in rows:
            urn = (row.get("urn") or "").strip()
            reason = problem or ("empty urn" if not urn else
                                 "duplicate urn (the first row is kept)" if urn in columns else None)
            if reason is not None:
                if rejected is not None:
                    rejected.append(RejectedRow(line, urn, (row.get("path") or "").strip(), reason))
                continue
            values = {name: (value or "").strip() for name, value in row.items() if name is not None}
            columns[urn] = Columns(values.pop("path", "") or None, values.pop("date", "") or None,
                                   {name: value for name, value in values.items() if name != "urn"})
    return columns
