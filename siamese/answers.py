"""The only code that turns store rows and search hits into what the API, the CLI and notebooks see.

One metadata rule for every answer: an item shows as urn, (distance), date, year, path, then its
metadata columns in CSV order, and a metadata column never hides or imitates a field of the answer
(a column named urn, distance, date, year, path or vector is left out).
"""

from __future__ import annotations

import numpy as np

from siamese.periods import Period
from siamese.reprints import Verification
from siamese.search import PeriodHits
from siamese.vector_store import VectorStore

RESERVED = frozenset({"urn", "distance", "date", "year", "path", "vector"})  # not metadata in the JSON


def describe(item: dict, distance: float | None = None) -> dict:
    """An item as the JSON shows it: urn, (distance), date, year, path, then its metadata columns."""
    described = {"urn": item["urn"]}
    if distance is not None:
        described["distance"] = distance
    described.update(date=item["date"], year=item["year"], path=item["path"])
    metadata = item.get("metadata") or {}
    if RESERVED.isdisjoint(metadata):
        described.update(metadata)
    else:
        described.update((name, value) for name, value in metadata.items() if name not in RESERVED)
    return described


def vector_list(vector: np.ndarray) -> list[float | None]:
    """A stored vector for JSON: a value JSON cannot hold (only in a store written before such rows
    were refused; `annoy_indexer.py verify` counts them) becomes null instead of failing the answer."""
    if np.isfinite(vector).all():
        return vector.tolist()
    return [value if np.isfinite(value) else None for value in vector.tolist()]


def item_answer(store: VectorStore, row: int, vectors: bool = False) -> dict:
    """{"urn", "metadata": {date, year, path, ...columns}} (+ "vector") for one row of the store."""
    described = describe(store.items[row])
    answer = {"urn": described.pop("urn"), "metadata": described}
    if vectors:
        answer["vector"] = vector_list(store.vectors[row])
    return answer


def neighbour_list(store: VectorStore, rows: np.ndarray, distances: np.ndarray,
                   vectors: bool = False, verification: Verification | None = None,
                   items: dict[int, dict] | None = None) -> list[dict]:
    """The neighbours as the API shows them, best first; `vectors` adds each one's "vector", and a
    neighbour checked for being a reprint gets "reprint" (true or false) and "inliers" after "distance".
    `items`: their items, read already (store.items_of)."""
    items = store.items_of(rows.tolist()) if items is None else items
    checks = verification.checks if verification is not None else {}
    found = []
    for row, distance in zip(rows.tolist(), distances.tolist(), strict=True):
        neighbour = describe(items[row], distance)
        check = checks.get(row)
        if check is not None:
            neighbour = {"urn": neighbour.pop("urn"), "distance": neighbour.pop("distance"),
                         "reprint": check.reprint, "inliers": check.inliers, **neighbour}
        if vectors:
            neighbour["vector"] = vector_list(store.vectors[row])
        found.append(neighbour)
    return found


def period_answer(period: Period, neighbours: list[dict], reprints: int | None = None) -> dict:
    """{"period", "start", "end", ("reprints",) "neighbours"}: "reprints" (when they were looked for)
    counts the verified reprints from this period, shown or not."""
    answer = {"period": period.label, "start": period.start, "end": period.end}
    if reprints is not None:
        answer["reprints"] = reprints
    answer["neighbours"] = neighbours
    return answer


def periods_answer(store: VectorStore, hits: dict[str, list[PeriodHits]], vectors: bool = False,
                   verification: Verification | None = None) -> dict[str, list[dict]]:
    """{"all" or step: [{"period", "start", "end", "neighbours": [...]}]} for the search core's hits."""
    reprint_years = None
    if verification is not None:
        reprint_years = np.array([store.items[row]["year"] for row, check in verification.checks.items()
                                  if check.reprint], dtype=np.int64)

    def count(period: Period) -> int | None:
        if reprint_years is None:
            return None
        return int(((reprint_years >= period.start) & (reprint_years <= period.end)).sum())

    items = store.items_of([row for periods in hits.values() for found in periods
                            for row in found.rows.tolist()])  # parsed in one go
    return {key: [period_answer(found.period, neighbour_list(store, found.rows, found.distances, vectors,
                                                             verification, items), count(found.period))
                  for found in periods]
            for key, periods in hits.items()}
