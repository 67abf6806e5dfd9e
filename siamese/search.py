"""The search core: loaded indices, and the nearest rows to a query in each period, exactly ranked.

How a query works, and why:

* What is searched is the collection's descriptors (siamese/descriptors.py): the stored vectors under
  the transform fitted on the collection, kept in the index directory; a query (a stored row, a vector,
  an upload's vector) goes through the same transform. With the 'raw' descriptor they are the stored
  vectors themselves.
* Annoy indexes a PCA projection of the descriptors (siamese/projection.py); the projection only
  chooses candidates, and every candidate is re-ranked with its exact distance, computed from the
  descriptors (a memory map). The distances reported are exact distances between descriptors; the
  approximation can only cost recall, which the number of candidates and `search_k` keep high.
* Each index hands over its candidates the cheapest way for its size: all of its rows when it is small
  (exact), a scan of its projected items (one matrix-vector product over a memory-mapped `.scan.npy`)
  when a tree search would have to collect a good part of it anyway, and Annoy's tree search when it
  is large. With the defaults, on the benchmark's 426,777 vectors, periods are scanned and the whole
  collection is searched with Annoy (see docs/benchmarks.md).

One answer shape: every search is over periods, and the whole collection is one period, under the key
"all". Results are rows and distances; siamese/answers.py turns them into what the API shows.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from siamese import index_dir as layout
from siamese.descriptors import DescriptorTransform
from siamese.periods import Period, periods_between
from siamese.projection import Projection, closest_first, exact_distances, ranking_scores
from siamese.vector_store import VectorStore

# Whitened 256-d descriptors, 128-d projection, recall@10 of the whole collection / step 10 / step 1: on the
# demo (bench/demo_recall.py) x1 0.996 / 0.979 / 0.975, x2 0.999 / 0.996 / 0.995, x4 1.000 / 0.999 / 0.999;
# at 426,777 items (bench/index_scale.py) x4 1.000 / 0.994 / 0.997. At 256-d a candidate costs an eighth
# of a raw 2048-d one to re-rank.
WHITENED_CANDIDATES = 4.0


@dataclass(frozen=True)
class SearchSettings:
    """How hard a search looks; the defaults were measured (docs/benchmarks.md), not guessed.

    search_k : Annoy's search_k for each tree search; None: search_k_per_candidate times the number of
        candidates kept. Larger: better recall, slower queries.
    search_k_per_candidate : Annoy's own default, n_trees * n, is tuned for speed; re-ranking needs the
        true neighbours among the candidates, so a search collects this many items per candidate kept.
    scan_below : an index of fewer than scan_below * search_k items is scanned (exact in the projection,
        and cheaper there than a tree search that collects most of it anyway).
    brute_force_max_rows : periods this small are searched exhaustively (exact and cheaper).
    candidate_multiplier : candidates kept for re-ranking, times n_candidates' count (the items a tree
        search collects do not change); None: 1 for raw descriptors, WHITENED_CANDIDATES for whitened
        ones, whose variance the projection keeps less of, so that their true neighbours sit deeper in
        its ranking (each costs an eighth of a raw 2048-d candidate to re-rank at 256-d).
    """

    search_k: int | None = None
    search_k_per_candidate: int = 500
    scan_below: int = 4
    brute_force_max_rows: int = 256
    candidate_multiplier: float | None = None

    def n_candidates(self, n: int, size: int, metric: str) -> int:
        """How many candidates a search of an index of `size` items keeps for exact re-ranking down to n.

        The projection ranks well but not exactly, and the more items crowd around the query the deeper
        the true n-th neighbour sits in its ranking: on the benchmark's vectors the true 10 nearest are
        among the projection's 60 nearest in periods of 8,500 items (recall 0.996) but need 100 in
        periods of 85,000 (0.995), hence n * (2 + 1.5 log2(size / 1000)). Re-ranking reads each
        candidate's vector (8 KiB at 2048-d), so candidates are most of what a query costs. Twice as
        many for 'manhattan', which the (euclidean) projection approximates less well.
        """
        factor = 2 + 1.5 * math.log2(max(size, 1000) / 1000)
        return int(max(factor * n, n + 20) * (2 if metric == "manhattan" else 1)) + 1  # + 1: itself

    def search_k_for(self, n_candidates: int) -> int:
        """Annoy's search_k: how many items a tree search collects (duplicates across trees included)."""
        return self.search_k if self.search_k is not None else self.search_k_per_candidate * n_candidates


@dataclass
class Index:
    """One loaded index: the Annoy file and scan matrix (both memory-mapped), the store rows of its items."""

    period: Period | None
    rows: np.ndarray
    annoy: AnnoyIndex | None
    scan: np.ndarray | None


@dataclass
class Query:
    """A query as every index reads it; `row` is its own store row (left out of its results), or -1."""

    row: int
    vector: np.ndarray  # the descriptor
    annoy: list[float]  # projected, for Annoy
    scan: np.ndarray  # projected, for the scan matrices


@dataclass
class PeriodHits:
    """The nearest rows of one period, best first, with their exact distances."""

    period: Period
    rows: np.ndarray
    distances: np.ndarray


class SearchCore:
    """The indices of one index directory over one vector store, loaded once and then only read.

    Thread-safe for queries: nothing is written after loading. `store` is shared with whoever opened it
    (the web app's Collection), so a process holds one copy of the items.
    """

    def __init__(self, store: VectorStore, index_dir: str | Path, step_sizes: list[int] | None = None,
                 settings: SearchSettings | None = None) -> None:
        """Load the directory's whole-collection index and those of `step_sizes` (None: every step size
        built). FileNotFoundError when nothing was built; IndexDamaged (naming the file) when an index
        file is missing or does not match its checksum: it is never memory-mapped then."""
        self.store = store
        self.index_dir = Path(index_dir)
        self.settings = settings or SearchSettings()
        manifest = layout.read_manifest(self.index_dir)
        if manifest is None:
            raise FileNotFoundError(f"no indices in {self.index_dir}")
        if manifest.get("store") != layout.store_state(store):
            raise layout.IndexDamaged(f"{self.index_dir} was built for another state of the store "
                                      f"{store.directory} (build again)")
        self.metric: str = manifest["metric"]
        # what the answers depend on: the store's state, every index's fingerprint, the transform
        self.fingerprint: str = hashlib.sha1(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
        self.step_sizes = layout.built_step_sizes(manifest) if step_sizes is None else list(step_sizes)
        self.transform: DescriptorTransform = layout.read_transform(self.index_dir, manifest.get("transform"))
        descriptor_dimensions = self.transform.dimensions(store.n_dimensions)
        self.descriptor = {"kind": manifest.get("descriptor", "raw"), "dimensions": descriptor_dimensions}
        self.candidate_multiplier = self.settings.candidate_multiplier if \
            self.settings.candidate_multiplier is not None else \
            1.0 if self.transform.is_identity else WHITENED_CANDIDATES
        if self.transform.is_identity:
            descriptors = store.vectors
        else:
            recorded = manifest.get("descriptors")
            if not recorded or not recorded.get("file"):
                raise layout.IndexDamaged(f"{self.index_dir / layout.MANIFEST} names no descriptors; "
                                          f"{layout.REBUILD}")
            descriptors = layout.read_descriptors(self.index_dir, recorded, store.count,
                                                  descriptor_dimensions)
        self.projection: Projection = layout.read_projection(self.index_dir, self.metric,
                                                             manifest.get("projection"))
        annoy_metric = self.projection.annoy_metric(descriptor_dimensions, manifest["index_dimensions"])
        dimensions = self.projection.dimensions(descriptor_dimensions)
        years = manifest["years"]
        self.years: tuple[int, int] | None = (years[0], years[1]) if years else None
        whole = Period(*self.years) if self.years else None
        self.indices: dict[str, list[Index]] = {
            layout.WHOLE: [self._load(manifest, layout.WHOLE, whole, dimensions, annoy_metric)]}
        for step in self.step_sizes:
            self.indices[str(step)] = [
                self._load(manifest, layout.index_key(step, period.start), period, dimensions, annoy_metric)
                for period in periods_between(*(self.years or (0, -1)), step)]
        _ = "" in store  # reads the items and their urns now, not in a first query
        self.vectors = np.asarray(descriptors)  # a plain ndarray: no np.memmap overhead per gather

    def _load(self, manifest: dict, key: str, period: Period | None, dimensions: int,
              annoy_metric: str) -> Index:
        """One index, its files checked first. A period small enough to be searched exhaustively
        needs only its rows: its Annoy file and scan matrix are not opened (two fewer file
        descriptors per period; a timeline of 1,500 thin years has 1,500 such periods)."""
        entry = layout.check_entry(self.index_dir, key, manifest["indices"].get(key, {"count": None}))
        if not entry["count"]:
            return Index(period, np.zeros(0, dtype=np.int64), None, None)
        problem = layout.damage(self.index_dir, entry)
        if problem is not None:
            raise layout.IndexDamaged(f"{self.index_dir}: index {key}: {problem}; rebuild it with: python "
                                      f"annoy_indexer.py build VECTOR_DIR {self.index_dir}")
        rows = np.load(self.index_dir / entry["rows"])
        if rows.shape != (entry["count"],) or rows.dtype.kind != "i" or (
                len(rows) and not (rows.min() >= 0 and rows.max() < self.store.count)):
            raise layout.IndexDamaged(f"{self.index_dir / entry['rows']}: not the rows of {entry['count']} "
                                      f"items of this store ({self.store.count} rows); rebuild with --force")
        if len(rows) <= self.settings.brute_force_max_rows:
            return Index(period, rows, None, None)
        scan = np.load(self.index_dir / entry["scan"], mmap_mode="r") if "scan" in entry else None
        index = AnnoyIndex(dimensions, annoy_metric)
        index.load(str(self.index_dir / entry["annoy"]))  # memory-mapped: read as searches touch them
        return Index(period, rows, index, None if scan is None else np.asarray(scan))

    @property
    def keys(self) -> list[str]:
        """What can be searched: "all" (the whole collection) and each step size loaded."""
        return list(self.indices)

    # ------------------------------------------------------------------------------------ queries

    def query_for_row(self, row: int) -> Query:
        return self._query(np.array(self.vectors[row]), row)

    def query_for_vector(self, vector: np.ndarray) -> Query:
        """A query by a vector as stored (the collection's model's); it is transformed here."""
        return self._query(self.transform.apply(vector))

    def _query(self, descriptor: np.ndarray, row: int = -1) -> Query:
        projected = self.projection.query(descriptor)
        return Query(row, descriptor, projected.tolist(), self.projection.scan_query(projected))

    def search(self, query: Query, plan: dict[str, int],
               include_self: bool = False) -> dict[str, list[PeriodHits]]:
        """The nearest rows to `query` in every period of each key of `plan` ("all" or a step size, as a
        string), `plan[key]` of them per period, best first; the query's own row is left out, unless
        `include_self` puts it in its own periods where its distance ranks it (the original Siamese did)."""
        results = {}
        for key, n in plan.items():
            indices = self.indices[key]
            hits = [PeriodHits(index.period, rows, distances) for index, (rows, distances)
                    in zip(indices, self._nearest(query, indices, n), strict=True)]
            if include_self and query.row >= 0:
                self._add_self(query, hits, n)
            results[key] = hits
        return results

    def _nearest(self, query: Query, indices: list[Index], n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The n nearest rows (and exact distances) to the query in each index, best first, itself excluded.

        Each index gives candidates the cheapest way (see the module doc); then the candidates of all the
        indices are re-ranked exactly in one go.
        """
        settings, metric = self.settings, self.metric
        parts = []
        for index in indices:
            size = len(index.rows)
            n_candidates = settings.n_candidates(n, size, metric)
            search_k = settings.search_k_for(n_candidates)
            n_candidates = int(n_candidates * self.candidate_multiplier)
            if size <= max(settings.brute_force_max_rows, n_candidates) or (
                    index.scan is None and size <= settings.scan_below * search_k):
                parts.append(index.rows)
            elif size <= settings.scan_below * search_k:
                scores = index.scan @ query.scan
                parts.append(index.rows[np.argpartition(scores, n_candidates - 1)[:n_candidates]])
            else:
                found = index.annoy.get_nns_by_vector(query.annoy, n_candidates, search_k)
                parts.append(index.rows[found])
        candidates = np.concatenate(parts)
        owner = np.repeat(np.arange(len(parts)), [len(part) for part in parts])
        keep = candidates != query.row
        candidates, owner = candidates[keep], owner[keep]
        vectors = np.take(self.vectors, candidates, axis=0)
        order = np.lexsort((ranking_scores(vectors, query.vector, metric), owner))
        boundaries = np.searchsorted(owner[order], np.arange(len(parts) + 1))
        best = [order[start:min(stop, start + n)] for start, stop in zip(boundaries[:-1], boundaries[1:],
                                                                            strict=True)]
        kept = np.concatenate(best)
        distances = exact_distances(vectors[kept], query.vector, metric)
        results, start = [], 0
        for rows in best:
            found, start = distances[start:start + len(rows)], start + len(rows)
            order = closest_first(found, metric)
            order = order[np.isfinite(found[order])]  # no answer carries a distance JSON cannot hold
            results.append((candidates[rows[order]], found[order]))
        return results

    def _add_self(self, query: Query, hits: list[PeriodHits], n: int) -> None:
        """Put the query among its own period's n nearest, before any neighbour at the same distance."""
        year = self.store.items[query.row]["year"]
        itself = exact_distances(query.vector[None, :], query.vector, self.metric)
        sign = -1 if self.metric == "dot" else 1
        for found in hits:
            if found.period is None or year not in found.period:
                continue
            position = int(np.searchsorted(sign * found.distances, sign * itself[0], side="left"))
            found.rows = np.insert(found.rows, position, query.row)[:n]
            found.distances = np.insert(found.distances, position, itself[0])[:n]
