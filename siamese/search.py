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
  (exact), a scan of its rows' int8 codes (siamese/codes.py) when a tree search would have to collect
  a good part of it anyway, and Annoy's tree search when it is large. The codes are sorted by year, so
  one pass scores the rows of every period a query asks for (all 50 years of a step-1 query, and its
  decades and whole collection with it); with the defaults, on the benchmark's 426,777 vectors, every
  index is scanned (docs/benchmarks.md), and Annoy's trees take over where a collection is too large
  to scan. The candidates are then ranked by their int8 descriptor codes, and only the best few of
  each period read their float32 descriptors for the exact distances.
* With the Qdrant backend (siamese/qdrant_index.py, for collections beyond one machine) Qdrant holds
  the descriptors and gives the candidates of every period of a query in one call; small periods and
  filtered searches are answered from the descriptors here. The re-ranking is the same.

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
from siamese.codes import DescriptorCodes, ProjectionCodes, smallest
from siamese.descriptors import DescriptorTransform
from siamese.periods import Period, periods_between
from siamese.projection import Projection, closest_first, exact_distances, ranking_scores
from siamese.qdrant_index import DEFAULT_HNSW_EF, QdrantCandidates
from siamese.vector_store import VectorStore

# Whitened 256-d descriptors, 128-d projection, recall@10 of the whole collection / step 10 / step 1: on the
# demo (bench/demo_recall.py) x1 0.996 / 0.979 / 0.975, x2 0.999 / 0.996 / 0.995, x4 1.000 / 0.999 / 0.999;
# at 426,777 items (bench/index_scale.py) x4 1.000 / 0.994 / 0.997. At 256-d a candidate costs an eighth
# of a raw 2048-d one to re-rank.
WHITENED_CANDIDATES = 4.0
# Candidates ranked by their int8 descriptor codes keep this many times n per period for the exact
# distances: int8 rounding can only swap near-ties, never move the true n-th far down.
EXACT_PER_RESULT = 2
# Qdrant ranks by the descriptors themselves (HNSW's approximation aside): twice n, re-ranked exactly
QDRANT_PER_RESULT = 2
ALL_ROWS, SCAN, TREES, QDRANT = "all rows", "scan", "trees", "qdrant"  # how an index gives its candidates


@dataclass(frozen=True)
class SearchSettings:
    """How hard a search looks; the defaults were measured (docs/benchmarks.md), not guessed.

    search_k : Annoy's search_k for each tree search; None: search_k_per_candidate times the number of
        candidates kept. Larger: better recall, slower queries.
    search_k_per_candidate : Annoy's own default, n_trees * n, is tuned for speed; re-ranking needs the
        true neighbours among the candidates, so a search collects this many items per candidate kept.
    scan_below : an index of fewer than scan_below * search_k items is scanned (its int8 codes, exact in
        the projection); an index whose rows a query has scanned for another of its periods always is.
        At 426,777 items scanning the whole collection took 4.1 ms, its trees 10.1 ms (same recall, 1.0),
        so scans pay up to about a million items, where search_k is about 85,000.
    brute_force_max_rows : periods this small are searched exhaustively (exact and cheaper).
    candidate_multiplier : candidates kept for re-ranking, times n_candidates' count (the items a tree
        search collects do not change); None: 1 for raw descriptors, WHITENED_CANDIDATES for whitened
        ones, whose variance the projection keeps less of, so that their true neighbours sit deeper in
        its ranking (each costs an eighth of a raw 2048-d candidate to re-rank at 256-d).
    threads : threads for one query's scan of the codes; 1 suits a server whose workers fill the cores.
    hnsw_ef : the Qdrant backend's HNSW ef per query (at least twice the candidates asked for): larger,
        better recall in large filtered periods, slower. Measured with Qdrant's engine on 100,000 images
        (bench/qdrant_backend.py): recall@10 in decades (20,000 images each) 0.978 at 128, 0.996 at
        256, 0.999 at 512, for 48 / 58 / 87 ms a search of all 56 periods.
    """

    search_k: int | None = None
    search_k_per_candidate: int = 500
    scan_below: int = 12
    brute_force_max_rows: int = 256
    candidate_multiplier: float | None = None
    threads: int = 1
    hnsw_ef: int = DEFAULT_HNSW_EF

    def n_candidates(self, n: int, size: int, metric: str) -> int:
        """How many candidates a search of an index of `size` items keeps for exact re-ranking down to n.

        The projection ranks well but not exactly, and the more items crowd around the query the deeper
        the true n-th neighbour sits in its ranking: on the benchmark's vectors the true 10 nearest are
        among the projection's 60 nearest in periods of 8,500 items (recall 0.996) but need 100 in
        periods of 85,000 (0.995), hence n * (2 + 1.5 log2(size / 1000)). Twice as many for
        'manhattan', which the (euclidean) projection approximates less well.
        """
        factor = 2 + 1.5 * math.log2(max(size, 1000) / 1000)
        return int(max(factor * n, n + 20) * (2 if metric == "manhattan" else 1)) + 1  # + 1: itself

    def search_k_for(self, n_candidates: int) -> int:
        """Annoy's search_k: how many items a tree search collects (duplicates across trees included)."""
        return self.search_k if self.search_k is not None else self.search_k_per_candidate * n_candidates


@dataclass
class Index:
    """One loaded index: the Annoy file (memory-mapped), the store rows of its items, and where its rows
    lie in the codes (sorted by year: one span per period)."""

    period: Period | None
    rows: np.ndarray
    annoy: AnnoyIndex | None
    span: tuple[int, int]


@dataclass
class Query:
    """A query as every index reads it; `row` is its own store row (left out of its results), or -1.
    `scores` holds its scores over the codes' positions `scored` once a search has scanned them, so that
    the periods of every step size searched for it share one scan."""

    row: int
    vector: np.ndarray  # the descriptor
    projected: np.ndarray  # its projection
    annoy: list[float]  # the projection, for Annoy
    scored: tuple[int, int] = (0, 0)
    scores: np.ndarray | None = None

    def has_scanned(self, span: tuple[int, int]) -> bool:
        return self.scores is not None and self.scored[0] <= span[0] and span[1] <= self.scored[1]


@dataclass
class PeriodHits:
    """The nearest rows of one period, best first, with their exact distances."""

    period: Period
    rows: np.ndarray
    distances: np.ndarray


@dataclass(frozen=True)
class Route:
    """How one index gives a query's candidates, and how many."""

    how: str  # ALL_ROWS, SCAN, TREES or QDRANT
    n_candidates: int
    search_k: int


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
        years = store.years()
        # None for a directory built before the codes (searched by its trees, or exhaustively, until the
        # next build adds them) and when the descriptors are indexed as they are (no projection)
        self.codes: ProjectionCodes | None = None
        self.descriptor_codes: DescriptorCodes | None = None
        if manifest.get("codes") and self.projection.components is not None:
            self.codes, self.descriptor_codes = layout.read_codes(self.index_dir, manifest["codes"], years,
                                                                  self.metric, descriptor_dimensions)
        by_year = np.argsort(years, kind="stable") if self.codes is None else self.codes.order
        sorted_years = years[by_year] if self.codes is None else self.codes.years
        self.qdrant: QdrantCandidates | None = None
        if manifest.get("backend") == "qdrant":
            if not manifest.get("qdrant"):
                raise layout.IndexDamaged(f"{self.index_dir / layout.MANIFEST} names no Qdrant collection; "
                                          f"{layout.REBUILD}")
            self.qdrant = QdrantCandidates(manifest["qdrant"], store.count, self.settings.hnsw_ef)
        annoy_metric = self.projection.annoy_metric(descriptor_dimensions, manifest["index_dimensions"])
        dimensions = self.projection.dimensions(descriptor_dimensions)
        span = manifest["years"]
        self.years: tuple[int, int] | None = (span[0], span[1]) if span else None
        whole = Period(*self.years) if self.years else None
        self.indices: dict[str, list[Index]] = {
            layout.WHOLE: [self._load(manifest, layout.WHOLE, whole, (0, len(years)), dimensions,
                                      annoy_metric, by_year)]}
        for step in self.step_sizes:
            self.indices[str(step)] = [
                self._load(manifest, layout.index_key(step, period.start), period,
                           (int(np.searchsorted(sorted_years, period.start)),
                            int(np.searchsorted(sorted_years, period.end, side="right"))),
                           dimensions, annoy_metric, by_year)
                for period in periods_between(*(self.years or (0, -1)), step)]
        _ = "" in store  # reads the items and their urns now, not in a first query
        self.vectors = np.asarray(descriptors)  # a plain ndarray: no np.memmap overhead per gather

    def _load(self, manifest: dict, key: str, period: Period | None, span: tuple[int, int], dimensions: int,
              annoy_metric: str, by_year: np.ndarray) -> Index:
        """One index, its files checked first. A period small enough to be searched exhaustively
        needs only its rows: its Annoy file is not opened (one file descriptor fewer per period; a
        timeline of 1,500 thin years has 1,500 such periods). With Qdrant there are no files: the
        period's rows are its span of the rows sorted by year (`by_year`)."""
        entry = layout.check_entry(self.index_dir, key, manifest["indices"].get(key, {"count": None}))
        if span[1] - span[0] != entry["count"]:
            raise layout.IndexDamaged(f"{self.index_dir}: index {key} holds {entry['count']} items, the "
                                      f"store {span[1] - span[0]} in its years; {layout.REBUILD}")
        if not entry["count"]:
            return Index(period, np.zeros(0, dtype=np.int64), None, span)
        if self.qdrant is not None:
            if entry.get("qdrant") is not True:
                raise layout.IndexDamaged(f"{self.index_dir}: index {key} is not in the Qdrant collection; "
                                          f"{layout.REBUILD}")
            return Index(period, np.sort(by_year[span[0]:span[1]]), None, span)
        problem = layout.damage(self.index_dir, {kind: value for kind, value in entry.items()
                                                 if kind != "scan"})  # (older builds' scan files: unread)
        if problem is not None:
            raise layout.IndexDamaged(f"{self.index_dir}: index {key}: {problem}; rebuild it with: python "
                                      f"annoy_indexer.py build VECTOR_DIR {self.index_dir}")
        rows = np.load(self.index_dir / entry["rows"])
        if rows.shape != (entry["count"],) or rows.dtype.kind != "i" or (
                len(rows) and not (rows.min() >= 0 and rows.max() < self.store.count)):
            raise layout.IndexDamaged(f"{self.index_dir / entry['rows']}: not the rows of {entry['count']} "
                                      f"items of this store ({self.store.count} rows); rebuild with --force")
        if len(rows) <= self.settings.brute_force_max_rows:
            return Index(period, rows, None, span)
        index = AnnoyIndex(dimensions, annoy_metric)
        index.load(str(self.index_dir / entry["annoy"]))  # memory-mapped: read as searches touch them
        return Index(period, rows, index, span)

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
        return Query(row, descriptor, projected, projected.tolist())

    def search(self, query: Query, plan: dict[str, int], include_self: bool = False,
               allowed: np.ndarray | None = None) -> dict[str, list[PeriodHits]]:
        """The nearest rows to `query` in every period of each key of `plan` ("all" or a step size, as a
        string), `plan[key]` of them per period, best first; the query's own row is left out, unless
        `include_self` puts it in its own periods where its distance ranks it (the original Siamese did).

        Every index to be scanned is scanned in one pass over the codes, first; an index that would use
        its trees but whose rows that pass covered takes its candidates from the scores instead.

        `allowed` (a filter: True for the store rows that may be answered): every index is scanned then,
        since Annoy's trees cannot leave rows out, and the rows not allowed never become candidates."""
        routes = {key: [self._route(index, n, allowed is not None) for index in self.indices[key]]
                  for key, n in plan.items()}
        spans = [index.span for key in plan
                 for index, route in zip(self.indices[key], routes[key], strict=True) if route.how == SCAN]
        covering = (min(start for start, _ in spans), max(stop for _, stop in spans)) if spans else (0, 0)
        if spans and not query.has_scanned(covering):
            assert self.codes is not None
            query.scored = covering
            query.scores = self.codes.scores(query.projected, *covering, threads=self.settings.threads)
        scores = query.scores
        if allowed is not None and scores is not None:  # a copy: the query's own scores stay unfiltered
            scores = np.where(allowed[self.codes.order[query.scored[0]:query.scored[1]]], scores, np.inf)
        asked = [(key, position) for key in plan for position, route in enumerate(routes[key])
                 if route.how == QDRANT]
        from_qdrant = dict(zip(asked, self.qdrant.candidates(query.vector, [
            (None, 0, routes[key][position].n_candidates) if key == layout.WHOLE else
            (self.indices[key][position].period, int(key), routes[key][position].n_candidates)
            for key, position in asked]), strict=True)) if asked else {}
        results = {}
        for key, n in plan.items():
            indices = self.indices[key]
            parts = [from_qdrant[key, position] if route.how == QDRANT else
                     self._candidates(query, index, route, scores, allowed)
                     for position, (index, route) in enumerate(zip(indices, routes[key], strict=True))]
            hits = [PeriodHits(index.period, rows, distances) for index, (rows, distances)
                    in zip(indices, self._rank(query, parts, n, allowed), strict=True)]
            if include_self and query.row >= 0:
                self._add_self(query, hits, n)
            results[key] = hits
        return results

    def _route(self, index: Index, n: int, filtered: bool = False) -> Route:
        """How an index gives its candidates: the cheapest way for its size (see the module doc); with
        a filter, never its trees."""
        settings, size = self.settings, len(index.rows)
        if self.qdrant is not None:  # filtered: Qdrant holds no metadata, the descriptors are searched here
            small = size <= max(settings.brute_force_max_rows, QDRANT_PER_RESULT * n + 1)
            return Route(ALL_ROWS if small or filtered else QDRANT, QDRANT_PER_RESULT * n + 1, 0)
        n_candidates = settings.n_candidates(n, size, self.metric)
        search_k = settings.search_k_for(n_candidates)
        n_candidates = int(n_candidates * self.candidate_multiplier)
        if size <= max(settings.brute_force_max_rows, n_candidates):
            how = ALL_ROWS
        elif size <= settings.scan_below * search_k or index.annoy is None or filtered:
            how = ALL_ROWS if self.codes is None else SCAN
        else:
            how = TREES
        return Route(how, n_candidates, search_k)

    def _candidates(self, query: Query, index: Index, route: Route, scores: np.ndarray | None,
                    allowed: np.ndarray | None) -> np.ndarray:
        """The store rows among which the index's nearest to the query are (the query's own row too,
        and, with a filter, rows it leaves out: _rank drops them). `scores`: the query's scores over
        the codes it scanned, +inf where the filter leaves a row out."""
        how = SCAN if route.how == TREES and query.has_scanned(index.span) else route.how
        if how == ALL_ROWS:
            return index.rows if allowed is None else index.rows[allowed[index.rows]]
        if how == SCAN:
            assert self.codes is not None and scores is not None
            offset = index.span[0] - query.scored[0]
            scores = scores[offset:offset + len(index.rows)]
            return self.codes.order[index.span[0] + smallest(scores, route.n_candidates)]
        found = index.annoy.get_nns_by_vector(query.annoy, route.n_candidates, route.search_k)
        return index.rows[found]

    def _rank(self, query: Query, parts: list[np.ndarray], n: int,
              allowed: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """The n nearest of each part's candidates (rows and exact distances, best first, the query's own
        row left out), all parts ranked in one go.

        With int8 descriptor codes every candidate is ranked by them and only EXACT_PER_RESULT * n of
        each part read their float32 descriptors; without, every candidate does (ranked the cheap way,
        ranking_scores, then the n best measured exactly)."""
        metric = self.metric
        candidates = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        owner = np.repeat(np.arange(len(parts)), [len(part) for part in parts])
        keep = candidates != query.row
        if allowed is not None:
            keep &= allowed[candidates]
        candidates, owner = candidates[keep], owner[keep]
        if self.descriptor_codes is not None and metric != "manhattan":
            scores = self.descriptor_codes.ranking_scores(query.vector, candidates)
            boundaries = np.searchsorted(owner, np.arange(len(parts) + 1))  # parts are in order already
            width = EXACT_PER_RESULT * n
            best = [np.arange(start, stop) if stop - start <= width else
                    start + np.argpartition(scores[start:stop], width - 1)[:width]
                    for start, stop in zip(boundaries[:-1], boundaries[1:], strict=True)]
            kept = np.concatenate(best) if best else np.zeros(0, np.int64)
            distances = exact_distances(np.take(self.vectors, candidates[kept], axis=0), query.vector, metric)
        else:
            vectors = np.take(self.vectors, candidates, axis=0)
            order = np.lexsort((ranking_scores(vectors, query.vector, metric), owner))
            boundaries = np.searchsorted(owner[order], np.arange(len(parts) + 1))
            best = [order[start:min(stop, start + n)] for start, stop in zip(boundaries[:-1], boundaries[1:],
                                                                                strict=True)]
            kept = np.concatenate(best) if best else np.zeros(0, np.int64)
            distances = exact_distances(vectors[kept], query.vector, metric)
        results, start = [], 0
        for rows in best:
            found, start = distances[start:start + len(rows)], start + len(rows)
            order = closest_first(found, metric)
            order = order[np.isfinite(found[order])][:n]  # no answer carries a distance JSON cannot hold
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
