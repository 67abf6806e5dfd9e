"""Which rows have which value in a metadata column: for filters (filter=newspaper:NRC Handelsblad) and
for the counts of facets.

A column is read once per process, on first use, from the store's items (all of them parsed once: a
few seconds at 426,777 rows), and kept as one small integer per row (the value's number) plus the
values: 1.7 MB a column at 426,777 rows, whatever its values. A filter is then a boolean mask over the
store's rows, which the search applies where it scans (siamese/search.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from siamese.vector_store import VectorStore

ITEM_FIELDS = ("date", "year", "path")  # an item's own fields, filterable like its metadata columns
CHUNK = 50_000  # items parsed at a time while a column is read
MAX_FACET_VALUES = 50  # a column with more distinct values is no list to choose from


class UnknownColumn(ValueError):
    """A filter names a column no item has."""


@dataclass(frozen=True)
class Column:
    """One column: every row's value number (-1: the row has no value), and the values."""

    codes: np.ndarray
    values: list[str]

    def counts(self) -> list[tuple[str, int]]:
        """(value, rows with it), most rows first, then by value."""
        counted = np.bincount(self.codes[self.codes >= 0], minlength=len(self.values))
        return sorted(((value, int(count)) for value, count in zip(self.values, counted, strict=True)
                       if count), key=lambda pair: (-pair[1], pair[0]))


class Facets:
    """The metadata columns of one store, read as they are asked for; thread-safe."""

    def __init__(self, store: VectorStore) -> None:
        self.store = store
        self._columns: dict[str, Column] = {}
        self._names: list[str] | None = None
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """Every metadata column some item has, in the order first met (the CSV's order)."""
        if self._names is None:
            with self._lock:
                if self._names is None:
                    found: dict[str, None] = {}
                    for start in range(0, self.store.count, CHUNK):
                        for item in self.store.items.many(range(start, min(start + CHUNK, self.store.count))):
                            found.update(dict.fromkeys(item.get("metadata") or {}))
                    self._names = list(found)
        return self._names

    def column(self, name: str) -> Column:
        """The column `name` (an item field or a metadata column); UnknownColumn when no item has it."""
        column = self._columns.get(name)
        if column is not None:
            return column
        if name not in ITEM_FIELDS and name not in self.names():
            known = ", ".join([*ITEM_FIELDS, *self.names()])
            raise UnknownColumn(f"no column {name!r} in this collection; its columns are {known}")
        with self._lock:
            if name not in self._columns:
                self._columns[name] = self._read(name)
            return self._columns[name]

    def _read(self, name: str) -> Column:
        codes = np.full(self.store.count, -1, dtype=np.int32)
        numbers: dict[str, int] = {}
        for start in range(0, self.store.count, CHUNK):
            stop = min(start + CHUNK, self.store.count)
            for row, item in zip(range(start, stop), self.store.items.many(range(start, stop)), strict=True):
                value = item.get(name) if name in ITEM_FIELDS else (item.get("metadata") or {}).get(name)
                if value is None or value == "":
                    continue
                codes[row] = numbers.setdefault(str(value), len(numbers))
        return Column(codes, list(numbers))

    def facets(self, max_values: int = MAX_FACET_VALUES) -> list[dict]:
        """The metadata columns worth choosing from (2 to max_values distinct values), each with its
        values and their counts: [{"name", "values": [[value, count], ...]}]. Others (titles, ids) are
        filtered by naming a value (filter=column:value) rather than chosen from a list."""
        chosen = []
        for name in self.names():
            column = self.column(name)
            if 2 <= len(column.values) <= max_values:
                chosen.append({"name": name, "values": [list(pair) for pair in column.counts()]})
        return chosen

    def mask(self, filters: dict[str, list[str]]) -> np.ndarray:
        """The rows that pass every column's filter (a row passes a column's when it has one of the
        values given for it): True where it passes."""
        allowed = np.ones(self.store.count, dtype=bool)
        for name, wanted in filters.items():
            column = self.column(name)
            numbers = [number for number, value in enumerate(column.values) if value in set(wanted)]
            allowed &= np.isin(column.codes, np.array(numbers, dtype=np.int32))
        return allowed
