"""An answer as a file a researcher keeps: CSV (one row per neighbour) or JSON, with a file name.

`format=csv|json` on /api/neighbours and POST /api/search, and the page's download button, give the
answer being shown as a download. The CSV is flat, for a spreadsheet or pandas: which query, which
step and period, the neighbour's rank and distance, its date and path, its metadata columns (every
column any neighbour has, in the order met), whether it was checked for being a reprint, and a link
to its own search page (`siamese_url`), so that a row leads back to the tool.
"""

from __future__ import annotations

import csv
import io
import re
from urllib.parse import urlencode

FORMATS = ("json", "csv")
FIXED_COLUMNS = ("query", "step", "period", "start", "end", "rank", "urn", "distance", "date", "year", "path")
CHECK_COLUMNS = ("reprint", "inliers")
SKIPPED = frozenset({"thumbnail", "vector"})  # this server's cache URL, 2,048 numbers: not for a sheet


def file_name(answer: dict, extension: str) -> str:
    """siamese-<query>-<steps>.<extension>: the query's urn (or the upload's file name) kept to safe
    characters, so that downloads of different searches do not overwrite each other."""
    query = answer.get("urn") or (answer.get("metadata") or {}).get("filename") or "upload"
    steps = "-".join("all" if step is None else f"step{step}" for step in _steps_of(answer))
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", f"siamese-{query}-{steps}").strip("._")[:150]
    return f"{stem}.{extension}"


def _steps_of(answer: dict) -> list[int | str | None]:
    step = answer.get("step")
    return step if isinstance(step, list) else [step]


def neighbour_rows(answer: dict, page_url: str) -> tuple[list[str], list[list[object]]]:
    """(header, rows) of the CSV: one row per neighbour of every period of every step, best first."""
    query = answer.get("urn") or (answer.get("metadata") or {}).get("filename") or "(upload)"
    metadata_columns: dict[str, None] = {}
    checked = False
    found = []
    for step, periods in answer["steps"].items():
        for period in periods:
            for rank, neighbour in enumerate(period["neighbours"], 1):
                checked = checked or "reprint" in neighbour
                for name in neighbour:
                    if name not in FIXED_COLUMNS and name not in CHECK_COLUMNS and name not in SKIPPED:
                        metadata_columns.setdefault(name)
                found.append((step, period, rank, neighbour))
    header = [*FIXED_COLUMNS, *(CHECK_COLUMNS if checked else ()), *metadata_columns, "siamese_url"]
    rows = []
    for step, period, rank, neighbour in found:
        row = [query, step, period["period"], period["start"], period["end"], rank,
               *(neighbour.get(name, "") for name in FIXED_COLUMNS[6:])]
        if checked:
            row += [neighbour.get(name, "") for name in CHECK_COLUMNS]
        row += [neighbour.get(name, "") for name in metadata_columns]
        row.append(f"{page_url}?{urlencode({'urn': neighbour['urn']})}")
        rows.append(row)
    return header, rows


def answer_csv(answer: dict, page_url: str) -> str:
    """The answer as CSV text (RFC 4180: quoted where needed, CRLF line ends), a header row first.
    A cell that a spreadsheet would run as a formula (=, +, -, @ first) is prefixed with a quote."""
    header, rows = neighbour_rows(answer, page_url)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(value) for value in row])
    return buffer.getvalue()


def _cell(value: object) -> object:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    if isinstance(value, bool):
        return "true" if value else "false"
    return value
