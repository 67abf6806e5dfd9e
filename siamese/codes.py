"""Int8 codes: what a query reads to choose candidates, a quarter of the bytes of float32.

A search is bound by the bytes it reads: a step-1 query over 426,777 images looks at every image once
(each of the 50 years needs its own nearest), and reading their 128-d float32 projections (218 MB)
took 11 of its 22 ms; gathering its 13,400 candidates' float32 descriptors (13.7 MB, scattered)
most of the rest. Int8 codes keep the ranking (recall@10 unchanged, docs/benchmarks.md) at a quarter
of the bytes, and SimSIMD's int8 dot products (AVX-512 VNNI, AVX2, NEON) read them at memory speed.

Two tables, built with the indices (siamese/index_build.py) and memory-mapped by every worker:

* projection codes: every row's PCA projection (siamese/projection.py), one int8 per dimension under
  a per-dimension scale, **sorted by year**, so that every period of every step size, and the whole
  collection, is one contiguous span: one scan scores all of a query's periods at once, and a query
  for steps 10 and 1 together reads the table once. Beside them each row's `extra` term (its squared
  length, what the scan matrix's last column held), so that score = extra + c * <code, query code>
  orders rows like their projected distance.
* descriptor codes (whitened descriptors only, which are unit length): the descriptors in int8, so
  that candidates are ranked by their int8 dot product first and only the few best of each period
  read their float32 descriptors for the exact distances that answers report.

Quantisation errors only reorder near-ties among candidates; every reported distance is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import simsimd

LEVELS = 127  # symmetric int8: -127..127 (-128 unused, so that negating a code never overflows)
# Threshold selection: a sample holding about this many of the wanted candidates estimates the score
# below which a period's best lie (its quantile), one pass then keeps them. argpartition per period cost
# 70 us each, 3.5 ms for the 50 years of a step-1 query; this costs about a sixth.
SAMPLE_HITS = 48
SLACK = 1.25  # keep about 25 % more than asked: recall rises (0.9969 -> 0.9984) for 0.3 ms more ranking


def fit_scales(matrix: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """Per-column scales mapping the largest magnitude (finite rows) to LEVELS; 1 for an all-zero column.
    `chunk`: read a memory-mapped matrix this many rows at a time."""
    largest = np.zeros(matrix.shape[1], np.float32)
    step = chunk or max(len(matrix), 1)
    for start in range(0, len(matrix), step):
        rows = np.asarray(matrix[start:start + step], np.float32)
        rows = rows[np.isfinite(rows).all(axis=1)]
        if len(rows):
            largest = np.maximum(largest, np.abs(rows).max(axis=0))
    return np.where(largest > 0, largest / LEVELS, 1).astype(np.float32)


def quantise(matrix: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Rows as int8 codes under per-column scales; a non-finite row becomes zeros (its `extra` is +inf)."""
    codes = np.rint(np.asarray(matrix, np.float32) / scales)
    codes[~np.isfinite(codes).all(axis=1)] = 0
    return np.clip(codes, -LEVELS, LEVELS).astype(np.int8)


def query_code(vector: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, float]:
    """(int8 code, factor) with <codes, vector> ~ factor * <codes, code> for rows quantised with `scales`."""
    weighted = np.asarray(vector, np.float32) * scales
    largest = float(np.abs(weighted).max()) if len(weighted) else 0.0
    if not np.isfinite(largest) or largest == 0:
        return np.zeros((1, len(weighted)), np.int8), 0.0
    factor = largest / LEVELS
    return np.rint(weighted / factor).astype(np.int8)[None, :], factor


def int8_dots(code: np.ndarray, codes: np.ndarray, threads: int = 1) -> np.ndarray:
    """<code, row> for every row of `codes` (float32; exact integers)."""
    if not len(codes):
        return np.zeros(0, np.float32)
    return np.asarray(simsimd.cdist(code, codes, metric="dot", out_dtype="float32", threads=threads))[0]


def smallest(scores: np.ndarray, wanted: int) -> np.ndarray:
    """Positions of at least `wanted` of the smallest scores (all of them when there are fewer): about
    SLACK times as many, by a threshold estimated on a sample, else exactly `wanted` by argpartition."""
    size = len(scores)
    if size <= wanted:
        return np.arange(size)
    stride = max(1, int(wanted * SLACK / SAMPLE_HITS))
    sample = scores[::stride]
    rank = min(len(sample) - 1, int(np.ceil(wanted * SLACK / stride)))
    threshold = np.partition(sample, rank)[rank]
    found = np.flatnonzero(scores <= threshold)
    if len(found) < wanted or len(found) > 4 * wanted:  # an unlucky sample, or a wall of equal scores
        found = np.argpartition(scores, wanted - 1)[:wanted]
    return found


@dataclass
class ProjectionCodes:
    """Every row's projection as int8 codes sorted by year (see the module doc); memory-mapped."""

    codes: np.ndarray  # (rows, k) int8, year-sorted
    extra: np.ndarray  # (rows,) float32: the score's constant term; +inf for an unusable row
    scales: np.ndarray  # (k,) float32
    order: np.ndarray  # (rows,) int64: the store row at each position
    years: np.ndarray  # (rows,) the year at each position, ascending
    factor: float  # -2 for distances (|y|^2 - 2 y.q), -1 for 'dot' (-y.q)

    def span(self, first_year: int, last_year: int) -> tuple[int, int]:
        """Positions [start, stop) of the rows dated first_year..last_year."""
        return (int(np.searchsorted(self.years, first_year, side="left")),
                int(np.searchsorted(self.years, last_year, side="right")))

    def scores(self, projected_query: np.ndarray, start: int, stop: int, threads: int = 1) -> np.ndarray:
        """Scores of the rows at positions [start, stop), ordered like their projected distance."""
        code, factor = query_code(projected_query[:self.codes.shape[1]], self.scales)
        scores = int8_dots(code, self.codes[start:stop], threads)
        scores *= np.float32(self.factor * factor)  # in place: 426,777 rows are 1.7 MB a pass
        scores += self.extra[start:stop]
        return scores


@dataclass
class DescriptorCodes:
    """Unit-length descriptors as int8 codes, in store-row order: a cheap first ranking of candidates."""

    codes: np.ndarray  # (store rows, dimensions) int8
    scales: np.ndarray  # (dimensions,) float32

    def ranking_scores(self, descriptor: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Smaller first, like the distance, for unit vectors and every metric but manhattan: -<x, q>."""
        code, _ = query_code(descriptor, self.scales)
        return -int8_dots(code, np.take(self.codes, rows, axis=0))
