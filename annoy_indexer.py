"""Nearest neighbours of an image in the whole collection and within every period of its timeline.

    python annoy_indexer.py build VECTOR_DIR INDEX_DIR [--steps 10 1] [--metric euclidean] [--trees N]
    python annoy_indexer.py query VECTOR_DIR INDEX_DIR URN [--nns 5] [--step 10] [--vectors]

One Annoy index covers the whole collection and one covers each period (1940-1949, 1950-1959, ... and
1940, 1941, ... for steps 10 and 1), so "the 10 most similar images of 1953" is a search in the 1953
index, not a filter over the whole collection's neighbours (which would come back empty for thin years).

How a query works, and why:

* Annoy indexes a PCA projection of the vectors (128 dimensions by default, plus the length of what the
  projection leaves out), not the 2048-d vectors themselves: Annoy's trees prune well in a few dozen
  dimensions and hardly at all in thousands (its leaves hold about as many items as there are
  dimensions), and the projected indices are a fraction of the size and build in seconds.
* The projection only chooses candidates; every candidate is then re-ranked with its exact distance,
  computed from the stored vectors (the store's memory map). The distances reported are exact; the
  approximation can only cost recall, which the number of candidates and `search_k` keep high.
* Each index hands over its candidates the cheapest way for its size: all of its rows when it is small
  (exact), a scan of its projected items (one matrix-vector product over a memory-mapped `.scan.npy`)
  when a tree search would have to collect a good part of it anyway, and Annoy's tree search when it
  is large. With the defaults, on the benchmark's 426,777 vectors, periods are scanned and the whole
  collection is searched with Annoy (see docs/benchmarks.md).
* Every file is written under a temporary name and renamed into place, and `index.json` (the manifest)
  is rewritten after each index, so an interrupted build resumes where it stopped and a reader never
  sees half an index. File names carry a fingerprint of the index's rows and settings: a rebuilt index
  never overwrites a file that a running reader has memory-mapped.

"distance" follows Annoy's conventions: euclidean and manhattan are the usual distances, angular is
sqrt(2 - 2 cos), the euclidean distance between the unit-length vectors, and dot is the dot product
itself, so for dot larger means closer and neighbours come by decreasing "distance".
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex
from PIL import Image
from tqdm import tqdm

from siamese.backbones import Embedder, get_backbone, shared_embedder
from siamese.images import load_model_input, model_input_from_image
from siamese.periods import Period, periods_between, validate_step
from siamese.vector_store import StoreError, VectorStore, write_atomically

METRICS = ("angular", "euclidean", "manhattan", "dot")
MANIFEST = "index.json"
FORMAT = "siamese-annoy-indices"
VERSION = 1
DEFAULT_N_TREES = 20
DEFAULT_INDEX_DIMENSIONS = 128
PROJECTION_SAMPLE = 20_000  # rows the PCA is fitted on: plenty for 128 directions, seconds to compute
SEARCH_K_PER_CANDIDATE = 500  # the default search_k, per candidate kept (see AnnoyIndexer._search_k)
SCAN_BELOW = 4  # scan an index rather than search its trees when it holds < SCAN_BELOW * search_k items
CHUNK = 16_384  # rows read from the memory map at a time while building
TEMPORARY_PREFIX = ".annoy-indexer-"
WHOLE = "all"  # the key of the whole-collection index
RESERVED = frozenset({"urn", "distance", "date", "year", "path", "vector"})  # not metadata in the JSON
FILES = ("annoy", "rows", "scan")  # the files of one index, as the manifest names them
OUR_FILE = re.compile(r"^((all|step\d+_-?\d+)\.[0-9a-f]{12}\.(ann|rows\.npy|scan\.npy)"
                      r"|projection\.[0-9a-f]{12}\.npy)$")  # what garbage collection may delete


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive whole number, got {value!r}")
    return int(value)


def _store_state(store: VectorStore) -> dict:
    """What identifies the store's content cheaply; a store only grows, so this changes when it does."""
    return {"model": store.model, "n_dimensions": store.n_dimensions, "count": store.count,
            "items_bytes": store.manifest.get("items_bytes")}


def read_manifest(index_dir: str | os.PathLike) -> dict | None:
    """The index directory's manifest, or None when nothing was built there yet."""
    path = Path(index_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: unreadable index manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a manifest of annoy_indexer.py indices")
    if manifest.get("version") != VERSION:
        raise ValueError(f"{path}: manifest version {manifest.get('version')!r}, this code reads "
                         f"version {VERSION}; rebuild with build(force=True) / --force")
    return manifest


def _write_manifest(index_dir: Path, manifest: dict) -> None:
    write_atomically(index_dir / MANIFEST, json.dumps(manifest, indent=1).encode())


@contextlib.contextmanager
def _temporary(path: Path) -> Iterator[Path]:
    """A temporary name next to `path`; the caller renames it into place, or it is removed."""
    temporary = path.with_name(f"{TEMPORARY_PREFIX}{os.getpid()}-{path.name}.tmp")
    try:
        yield temporary
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _save_npy(path: Path, array: np.ndarray) -> None:
    with _temporary(path) as temporary:
        with open(temporary, "wb") as handle:
            np.save(handle, array)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)


@contextlib.contextmanager
def _build_lock(index_dir: Path) -> Iterator[None]:
    """One builder per index directory at a time; a second one waits, then finds the work done."""
    with open(index_dir / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


class _Projection:
    """What Annoy indexes, and what the scans of small periods read: a cheap stand-in for the vectors.

    Items become [(x - mean) @ components, |residual|], the PCA coordinates plus the length of what
    the PCA leaves out; a query becomes [(q - mean) @ components, 0]. Their squared euclidean distance
    |P(x - q)|^2 + |R x|^2 is the exact squared distance but for the residuals' cross term, which the
    PCA coordinates alone would ignore along with |R x|^2: counting |R x|^2 ranks candidates markedly
    better (recall of the true top 10 among 20 candidates 0.92 -> 0.96 on vectors like the benchmark's).
    'angular' projects unit vectors (sqrt(2 - 2 cos) is their euclidean distance); 'dot' projects
    without centring and without the residual, so that x . q ~ P(x) . P(q). Without components the
    vectors are indexed as they are (index_dimensions >= n_dimensions), unit-length for 'angular'.
    """

    def __init__(self, metric: str, mean: np.ndarray | None = None,
                 components: np.ndarray | None = None) -> None:
        self.normalise = metric == "angular"
        self.mean, self.components = mean, components
        self.residual = components is not None and metric != "dot"
        self.dot = metric == "dot"

    def dimensions(self, n_dimensions: int) -> int:
        """The dimensionality of what Annoy indexes."""
        return n_dimensions if self.components is None else self.components.shape[1] + self.residual

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        return _unit(vectors) if self.normalise else vectors

    def items(self, vectors: np.ndarray) -> np.ndarray:
        vectors = self._prepare(vectors)
        if self.components is None:
            return vectors
        centred = vectors - self.mean
        projected = centred @ self.components
        if not self.residual:
            return projected
        residual = (np.square(centred).sum(axis=1, dtype=np.float64)
                    - np.square(projected).sum(axis=1, dtype=np.float64))
        return np.hstack([projected, np.sqrt(np.maximum(residual, 0)).astype(np.float32)[:, None]])

    def query(self, vector: np.ndarray) -> np.ndarray:
        vector = self._prepare(vector[None, :])[0]
        if self.components is None:
            return vector
        projected = (vector - self.mean) @ self.components
        return np.append(projected, np.float32(0)) if self.residual else projected

    def scan_matrix(self, projected_items: np.ndarray) -> np.ndarray:
        """S such that S @ scan_query(q) orders the items like their Annoy distance to q, smallest first."""
        extra = np.zeros(len(projected_items), np.float32) if self.dot else \
            np.einsum("ij,ij->i", projected_items, projected_items)
        return np.hstack([projected_items, extra[:, None]])

    def scan_query(self, projected_query: np.ndarray) -> np.ndarray:
        # |y|^2 - 2 y.q orders like |y - q|^2; for dot, -y.q orders like decreasing y.q
        return np.append(-projected_query if self.dot else -2 * projected_query, np.float32(1))


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1)


def _fit_projection(vectors: np.ndarray, metric: str, k: int) -> tuple[np.ndarray, np.ndarray, float, int]:
    """PCA of a sample of the store: (mean, components d x k, share of variance kept, sample size)."""
    count = len(vectors)
    rows = np.sort(np.random.default_rng(0).choice(count, min(count, PROJECTION_SAMPLE), replace=False))
    sample = np.asarray(vectors[rows], dtype=np.float32)
    if metric == "angular":
        sample = _unit(sample)
    mean = np.zeros(sample.shape[1]) if metric == "dot" else sample.mean(axis=0, dtype=np.float64)
    centred = sample - mean.astype(np.float32)
    moments = (centred.T @ centred).astype(np.float64) / max(len(sample), 1)
    eigenvalues, eigenvectors = np.linalg.eigh(moments)  # ascending
    components = eigenvectors[:, ::-1][:, :k]
    total = float(eigenvalues.sum())
    kept = float(eigenvalues[::-1][:k].sum()) / total if total > 0 else 1.0
    return mean.astype(np.float32), np.ascontiguousarray(components, dtype=np.float32), kept, len(rows)


def ranking_scores(vectors: np.ndarray, query: np.ndarray, metric: str) -> np.ndarray:
    """Scores that order rows like their exact distances to `query` (smallest first), cheaply.

    For euclidean and angular they come from |x|^2 - 2 x.q and x.q, two fast passes over the rows
    (a third of the time of forming x - q); float32 rounding can swap near-ties, so the distances
    reported are computed again, directly, for the rows kept (exact_distances).
    """
    if metric == "euclidean":
        return np.einsum("ij,ij->i", vectors, vectors) - 2 * (vectors @ query)
    if metric == "angular":
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
        return -np.divide(vectors @ query, norms, out=np.zeros(len(vectors), np.float32), where=norms > 0)
    if metric == "dot":
        return -(vectors @ query)
    return exact_distances(vectors, query, metric)


def exact_distances(vectors: np.ndarray, query: np.ndarray, metric: str) -> np.ndarray:
    """Exact distances from each row of `vectors` to `query`, by Annoy's conventions (see the module doc)."""
    if metric == "euclidean":
        difference = vectors - query
        return np.sqrt(np.einsum("ij,ij->i", difference, difference))
    if metric == "manhattan":
        return np.abs(vectors - query).sum(axis=1)
    products = vectors @ query
    if metric == "dot":
        return products
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors)) * np.float32(np.linalg.norm(query))
    cosines = np.divide(products, norms, out=np.zeros_like(products), where=norms > 0)
    return np.sqrt(np.maximum(2 - 2 * cosines, 0))


@dataclass
class _Index:
    """One loaded index: the Annoy file and scan matrix (both memory-mapped), the store rows of its items."""

    period: Period | None
    rows: np.ndarray
    annoy: AnnoyIndex | None
    scan: np.ndarray | None


@dataclass
class _Query:
    row: int
    vector: np.ndarray  # as stored
    annoy: list[float]  # projected, for Annoy
    scan: np.ndarray  # projected, for the scan matrices


@dataclass
class _Loaded:
    store: VectorStore
    vectors: np.ndarray  # the store's memory map, as a plain ndarray (no np.memmap overhead per gather)
    project: _Projection
    whole: _Index
    steps: dict[int, list[_Index]]


class AnnoyIndexer:
    """Annoy indices over a vector store: one for the whole collection, one per period per step size.

    Parameters
    ----------
    vector_dir : the vector store (see siamese/vector_store.py).
    index_dir : where the indices and their manifest `index.json` live.
    n_dimensions : the vectors' dimensionality; None reads it from the store, a value that differs from
        the store's is a ValueError (a guard against pointing at the wrong store).
    metric : one of 'angular', 'euclidean', 'manhattan', 'dot' (Annoy's metrics).
    step_sizes : period lengths in years; periods are aligned to calendar multiples of the step.
    n_trees : Annoy trees per index (more: better recall at a given search_k, bigger files);
        None: the index directory's setting, or 20 for a new one.
    search_k : Annoy's search_k for each tree search; None: SEARCH_K_PER_CANDIDATE (500) times the number
        of candidates kept. Larger: better recall, slower queries; an index of fewer than
        SCAN_BELOW * search_k items is scanned instead (exact in the projection, and cheaper there).
    index_dimensions : dimensions of the PCA projection that Annoy indexes; None: the index directory's
        setting, or 128 for a new one (64 gave recall@10 of only 0.965 on the real Inception vectors of
        the demo; 128 gives 0.996); n_dimensions or more indexes the vectors as they are.
    n_jobs : threads Annoy builds trees with; -1 uses every core.
    verbose : show build progress (tqdm, on stderr).

    An index directory holds one configuration (metric, model, n_dimensions, index_dimensions,
    n_trees); asking for another is a ValueError unless build(force=True) replaces it.
    """

    brute_force_max_rows = 256  # periods this small are searched exhaustively (exact and cheaper)

    def __init__(self, vector_dir: str | os.PathLike = "vectors",
                 index_dir: str | os.PathLike = "indices-eucl", n_dimensions: int | None = None,
                 metric: str = "euclidean",
                 step_sizes: Iterable[int] = (10, 1), n_trees: int | None = None,
                 search_k: int | None = None, index_dimensions: int | None = None, n_jobs: int = -1,
                 verbose: bool = True) -> None:
        self.vector_dir = Path(vector_dir)
        self.index_dir = Path(index_dir)
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(map(repr, METRICS))}, got {metric!r}")
        self.metric = metric
        self._use_step_sizes(step_sizes)
        self.n_trees = None if n_trees is None else _positive_int(n_trees, "n_trees")
        self.search_k = None if search_k is None else _positive_int(search_k, "search_k")
        self.index_dimensions = (None if index_dimensions is None
                                 else _positive_int(index_dimensions, "index_dimensions"))
        if isinstance(n_jobs, bool) or not isinstance(n_jobs, Integral) or not (n_jobs == -1 or n_jobs >= 1):
            raise ValueError(f"n_jobs must be -1 (every core) or a positive whole number, got {n_jobs!r}")
        self.n_jobs = int(n_jobs)
        self.verbose = verbose
        store = VectorStore(self.vector_dir)
        if n_dimensions is not None and _positive_int(n_dimensions, "n_dimensions") != store.n_dimensions:
            raise ValueError(f"n_dimensions={n_dimensions} but the vector store {self.vector_dir} holds "
                             f"{store.n_dimensions}-d vectors (of model {store.model!r})")
        self.n_dimensions = store.n_dimensions
        self._loaded: _Loaded | None = None
        self._load_lock = threading.Lock()

    # ---------------------------------------------------------------- configuration

    def _settings(self, manifest: dict | None, store: VectorStore) -> dict:
        """The configuration a build writes: the explicit parameters, else the directory's, else defaults."""
        def choose(name: str, default: int) -> int:
            explicit = getattr(self, name)
            if explicit is not None:
                return explicit
            return manifest[name] if manifest else default
        k = choose("index_dimensions", DEFAULT_INDEX_DIMENSIONS)
        return {"metric": self.metric, "model": store.model, "n_dimensions": store.n_dimensions,
                "index_dimensions": min(k, store.n_dimensions), "n_trees": choose("n_trees", DEFAULT_N_TREES)}

    def _check_compatible(self, manifest: dict, store: VectorStore) -> None:
        """ValueError when the directory holds indices of another configuration (never replace silently)."""
        wanted = self._settings(manifest, store)
        for name, value in wanted.items():
            if manifest.get(name) != value:
                raise ValueError(
                    f"{self.index_dir} holds indices built with {name}={manifest.get(name)!r}, not "
                    f"{name}={value!r}; use another index directory, the same {name}, or build(force=True) "
                    "(--force) to replace them")

    def _is_current(self, manifest: dict, store: VectorStore) -> bool:
        """The cheap check: same configuration and every wanted step built at the store's current state."""
        self._check_compatible(manifest, store)
        state = _store_state(store)
        complete = manifest.get("complete", {})
        return all(complete.get(key) == state for key in [WHOLE, *map(str, self.step_sizes)])

    # ---------------------------------------------------------------- building

    def _use_step_sizes(self, step_sizes: int | Iterable[int]) -> None:
        if isinstance(step_sizes, (str, bytes)) or not isinstance(step_sizes, Iterable):
            step_sizes = [step_sizes]  # a single step size
        steps = [validate_step(step if isinstance(step, bool) or not isinstance(step, Integral)
                               else int(step)) for step in step_sizes]
        if not steps or len(set(steps)) != len(steps):
            raise ValueError(f"step_sizes must list distinct step sizes, got {steps!r}")
        self.step_sizes = steps

    def build(self, force: bool = False, *, n_trees: int | None = None,
              step_sizes: int | Iterable[int] | None = None) -> dict:
        """Build the indices that are missing or stale; `force` rebuilds everything.

        `n_trees` and `step_sizes` (keywords) replace the indexer's settings first, so that the original
        Siamese's `indexer.build(n_trees=100, step_sizes=[10, 1])` works as its README says.

        Returns {"built", "up_to_date", "empty", "seconds", "seconds_by_index"}: how many indices (the
        whole collection's and every period's) were built now, were already current, or are not needed
        (empty periods); the wall time, and its split into "projection" (fitting the PCA and projecting
        the rows to index), "all" and each step size. Safe to interrupt: re-running keeps what was finished.
        """
        if n_trees is not None:
            self.n_trees = _positive_int(n_trees, "n_trees")
        if step_sizes is not None:
            self._use_step_sizes(step_sizes)
        started = time.perf_counter()
        self.index_dir.mkdir(parents=True, exist_ok=True)
        with _build_lock(self.index_dir):
            for leftover in self.index_dir.glob(f"{TEMPORARY_PREFIX}*.tmp"):
                leftover.unlink(missing_ok=True)  # from an interrupted build (we hold the lock)
            store = VectorStore(self.vector_dir)
            old = read_manifest(self.index_dir)
            if old is not None and not force:
                self._check_compatible(old, store)
            settings = self._settings(old, store)
            manifest = old if old is not None and not force else {
                "format": FORMAT, "version": VERSION, **settings, "projection": None, "complete": {},
                "indices": {}}
            report = self._build(manifest, store, settings)
            self._collect_garbage(manifest)
        self._loaded = None
        report["seconds"] = round(time.perf_counter() - started, 3)
        return report

    def _groups(self, years: np.ndarray) -> dict[str, tuple[Period | None, np.ndarray]]:
        """Every index to have: key -> (period, ascending store rows); empty periods included."""
        groups: dict[str, tuple[Period | None, np.ndarray]] = {WHOLE: (None, np.arange(len(years)))}
        if len(years) == 0:
            return groups
        for step in self.step_sizes:
            starts = years - years % step  # the same calendar alignment as periods.period_of
            order = np.argsort(starts, kind="stable")  # stable: rows stay ascending within a period
            sorted_starts = starts[order]
            for period in periods_between(int(years.min()), int(years.max()), step):
                lo, hi = np.searchsorted(sorted_starts, [period.start, period.start + step])
                groups[f"{step}/{period.start}"] = (period, order[lo:hi])
        return groups

    def _build(self, manifest: dict, store: VectorStore, settings: dict) -> dict:
        clock = time.perf_counter()
        project, refitted = self._projection(manifest, store, settings)
        # what an index's content depends on besides its rows; in its file names, so that a rebuilt index
        # never overwrites a file that a reader may have memory-mapped
        salt = f"{manifest['projection']['sha1']}:{self.metric}:{settings['n_trees']}:".encode()
        years = store.years()
        groups = self._groups(years)
        indices = manifest["indices"]
        report: dict = {"built": 0, "up_to_date": 0, "empty": 0}
        stale = {}
        for key, (_, rows) in groups.items():
            fingerprint = hashlib.sha1(salt + rows.astype("<i8").tobytes()).hexdigest()
            entry = indices.get(key)
            if (entry is None or entry.get("fingerprint") != fingerprint
                    or any(not (self.index_dir / entry[name]).is_file() for name in FILES if name in entry)):
                stale[key] = fingerprint
            report["empty" if not len(rows) else "up_to_date" if key not in stale else "built"] += 1
        if refitted:
            manifest["complete"] = {}  # indices of other step sizes were built with the old projection
        needed = [groups[key][1] for key in stale]
        projected = self._project_rows(store, project, np.unique(np.concatenate(needed))) \
            if needed and project.components is not None else None
        seconds = {"projection": time.perf_counter() - clock}  # where the time went, for the report
        with tqdm(total=len(stale), desc="annoy indices", unit="index", file=sys.stderr,
                  disable=not self.verbose) as progress:
            for key, fingerprint in stale.items():
                clock = time.perf_counter()
                progress.set_postfix_str(key, refresh=False)
                rows = groups[key][1]
                entry = {"fingerprint": fingerprint, "count": len(rows), "n_trees": settings["n_trees"]}
                if len(rows):
                    entry.update(self._write_index(key, rows, fingerprint, settings, store, project,
                                                   projected))
                replaced = indices.get(key)
                indices[key] = entry
                _write_manifest(self.index_dir, manifest)  # after each index: an interrupted build resumes
                for name in FILES:  # the index it replaces (a reader's memory map of it stays valid)
                    if replaced and name in replaced and replaced[name] != entry.get(name):
                        (self.index_dir / replaced[name]).unlink(missing_ok=True)
                group = key.split("/")[0]
                seconds[group] = seconds.get(group, 0.0) + time.perf_counter() - clock
                progress.update()
        state = _store_state(store)
        manifest.update(store_count=store.count, store=state,
                        years=[int(years.min()), int(years.max())] if len(years) else None)
        complete = {key: value for key, value in manifest["complete"].items() if value == state}
        manifest["complete"] = {**complete, **{key: state for key in [WHOLE, *map(str, self.step_sizes)]}}
        _write_manifest(self.index_dir, manifest)
        report["seconds_by_index"] = {name: round(value, 3) for name, value in seconds.items()}
        return report

    def _projection(self, manifest: dict, store: VectorStore, settings: dict) -> tuple[_Projection, bool]:
        """The manifest's projection, or a new one when there is none or it was fitted on too few rows.

        A projection fitted on the first 500 images of what becomes a 400,000-image collection would
        choose poor candidates, so it is refitted (and every index rebuilt) while the collection holds
        more than twice the rows it was fitted on, up to PROJECTION_SAMPLE rows.
        """
        k = settings["index_dimensions"]
        recorded = manifest["projection"]
        if k >= store.n_dimensions:  # the vectors as they are
            manifest["projection"] = {"sha1": "none", "index_dimensions": k}
            return _Projection(self.metric), recorded != manifest["projection"]
        enough = min(store.count, PROJECTION_SAMPLE)
        if recorded and recorded.get("file") and recorded["fitted_on"] * 2 >= enough:
            return self._read_projection(recorded["file"]), False
        mean, components, kept, fitted_on = _fit_projection(store.vectors, self.metric, k)
        sha1 = hashlib.sha1(mean.tobytes() + components.tobytes() + self.metric.encode()).hexdigest()
        name = f"projection.{sha1[:12]}.npy"
        _save_npy(self.index_dir / name, np.vstack([mean[None, :], components.T]))
        manifest["projection"] = {"file": name, "sha1": sha1, "index_dimensions": k, "fitted_on": fitted_on,
                                  "variance_kept": round(kept, 4)}
        return _Projection(self.metric, mean, components), True

    def _read_projection(self, name: str | None) -> _Projection:
        if not name:
            return _Projection(self.metric)
        saved = np.load(self.index_dir / name)  # row 0: the mean; rows 1..k: the components
        return _Projection(self.metric, saved[0], np.ascontiguousarray(saved[1:].T))

    def _project_rows(self, store: VectorStore, project: _Projection, rows: np.ndarray) -> np.ndarray:
        """Projected vectors of `rows` (the others left zero), read from the memory map chunk by chunk."""
        projected = np.zeros((store.count, project.dimensions(store.n_dimensions)), dtype=np.float32)
        chunks = range(0, len(rows), CHUNK)
        for start in tqdm(chunks, desc="projecting", unit="chunk", file=sys.stderr, leave=False,
                          disable=not self.verbose or len(chunks) < 4):
            chunk = rows[start:start + CHUNK]
            projected[chunk] = project.items(store.vectors[chunk])
        return projected

    def _write_index(self, key: str, rows: np.ndarray, fingerprint: str, settings: dict, store: VectorStore,
                     project: _Projection, projected: np.ndarray | None) -> dict:
        """Build and save one index: the Annoy file, the rows, and (with a projection) the scan matrix.

        Returns the file names for the manifest."""
        index = AnnoyIndex(project.dimensions(store.n_dimensions), self._annoy_metric(settings))
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start:start + CHUNK]
            vectors = projected[chunk] if projected is not None else project.items(store.vectors[chunk])
            for offset, vector in enumerate(vectors.tolist()):  # lists: Annoy reads them fastest
                index.add_item(start + offset, vector)
        index.build(settings["n_trees"], n_jobs=self.n_jobs)
        stem = f"{key if key == WHOLE else 'step' + key.replace('/', '_')}.{fingerprint[:12]}"
        names = {"annoy": f"{stem}.ann", "rows": f"{stem}.rows.npy"}
        if projected is not None:
            names["scan"] = f"{stem}.scan.npy"
            _save_npy(self.index_dir / names["scan"], project.scan_matrix(projected[rows]))
        with _temporary(self.index_dir / names["annoy"]) as temporary:
            index.save(str(temporary))
            index.unload()
            _fsync(temporary)
            os.replace(temporary, self.index_dir / names["annoy"])
        _save_npy(self.index_dir / names["rows"], rows.astype(np.int64))
        return names

    def _annoy_metric(self, settings: dict) -> str:
        """The metric Annoy indexes the projected vectors with (it only picks candidates)."""
        if self.metric == "dot":
            return "dot"
        if self.metric == "manhattan" and settings["index_dimensions"] >= settings["n_dimensions"]:
            return "manhattan"
        return "euclidean"  # angular: projected unit vectors; manhattan: a rotation changes L1, not L2

    def _collect_garbage(self, manifest: dict) -> None:
        """Delete our index files that the manifest no longer names: replaced by --force, or left by a
        build interrupted between writing a file and recording it. Files of other tools are left alone."""
        referenced = {entry[name] for entry in manifest["indices"].values()
                      for name in FILES if name in entry}
        referenced.add(manifest["projection"].get("file"))
        for path in self.index_dir.iterdir():
            if OUR_FILE.match(path.name) and path.name not in referenced:
                path.unlink(missing_ok=True)

    # ---------------------------------------------------------------- loading

    def load(self, step_sizes: int | Iterable[int] | None = None) -> AnnoyIndexer:
        """Load the indices now (building what is missing), rather than on the first query.

        The original Siamese's `load(step_sizes=[10])`: the step sizes to query from now on; None or []
        keeps the indexer's own (the original loaded every step size it found). Returns the indexer.
        """
        if step_sizes is not None and not (isinstance(step_sizes, Iterable) and not list(step_sizes)):
            self._use_step_sizes(step_sizes)
            self._loaded = None
        self._ensure_loaded()
        return self

    def _ensure_loaded(self) -> _Loaded:
        """The loaded indices; the first call loads them (building what is missing or stale first).

        Queries only read what is loaded, so threads may share an indexer (a web server does)."""
        loaded = self._loaded
        if loaded is not None:
            return loaded
        with self._load_lock:
            return self._loaded or self._load_current()

    def _load_current(self) -> _Loaded:
        store = VectorStore(self.vector_dir)
        manifest = read_manifest(self.index_dir)
        if manifest is None or not self._is_current(manifest, store):
            self.build()
            store, manifest = VectorStore(self.vector_dir), read_manifest(self.index_dir)
        try:
            self._loaded = self._load(manifest, store)
        except FileNotFoundError:  # an index deleted behind the manifest's back: build it again
            self.build()
            self._loaded = self._load(read_manifest(self.index_dir), VectorStore(self.vector_dir))
        return self._loaded

    def _load(self, manifest: dict, store: VectorStore) -> _Loaded:
        annoy_metric = self._annoy_metric(manifest)
        project = self._read_projection(manifest["projection"].get("file"))

        def load(key: str, period: Period | None) -> _Index:
            entry = manifest["indices"].get(key)
            if entry is None:
                raise FileNotFoundError(f"no index {key} in {self.index_dir / MANIFEST}")
            if not entry["count"]:
                return _Index(period, np.zeros(0, dtype=np.int64), None, None)
            rows = np.load(self.index_dir / entry["rows"])
            scan = np.load(self.index_dir / entry["scan"], mmap_mode="r") if "scan" in entry else None
            path = self.index_dir / entry["annoy"]
            if not path.is_file():
                raise FileNotFoundError(path)
            index = AnnoyIndex(project.dimensions(store.n_dimensions), annoy_metric)
            index.load(str(path))  # memory-mapped: pages are read as searches touch them
            return _Index(period, rows, index, None if scan is None else np.asarray(scan))

        _ = "" in store  # reads the items and their urns now, under the lock, not in a first query
        years = manifest["years"] or [0, -1]
        steps = {step: [load(f"{step}/{period.start}", period) for period in periods_between(*years, step)]
                 for step in self.step_sizes}
        return _Loaded(store, np.asarray(store.vectors), project, load(WHOLE, None), steps)

    # ---------------------------------------------------------------- querying

    def _n_candidates(self, n: int, size: int) -> int:
        """How many candidates a search of an index of `size` items keeps for exact re-ranking down to n.

        The projection ranks well but not exactly, and the more items crowd around the query the deeper
        the true n-th neighbour sits in its ranking: on the benchmark's vectors the true 10 nearest are
        among the projection's 60 nearest in periods of 8,500 items (recall 0.996) but need 100 in
        periods of 85,000 (0.995), hence n * (2 + 1.5 log2(size / 1000)). Re-ranking reads each
        candidate's vector (8 KiB at 2048-d), so candidates are most of what a query costs. Twice as
        many for 'manhattan', which the (euclidean) projection approximates less well.
        """
        factor = 2 + 1.5 * math.log2(max(size, 1000) / 1000)
        return int(max(factor * n, n + 20) * (2 if self.metric == "manhattan" else 1)) + 1  # + 1: itself

    def _search_k(self, n_candidates: int) -> int:
        """Annoy's search_k: how many items a tree search collects (duplicates across trees included).

        Annoy's own default, n_trees * n, is tuned for speed; re-ranking needs the true neighbours among
        the candidates, so by default (search_k=None) a search collects SEARCH_K_PER_CANDIDATE times as
        many items as it keeps.
        """
        return self.search_k if self.search_k is not None else SEARCH_K_PER_CANDIDATE * n_candidates

    def _search(self, loaded: _Loaded, query: _Query, indices: Sequence[_Index],
                n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The n nearest rows (and exact distances) to the query in each index, best first, itself excluded.

        Each index gives candidates the cheapest way: all its rows when it is small (exact), a scan of its
        projected items when a tree search would collect a good part of them anyway (fewer than
        SCAN_BELOW * search_k items), Annoy's tree search otherwise; then the candidates of all the
        indices are re-ranked exactly in one go.
        """
        parts = []
        for index in indices:
            size = len(index.rows)
            n_candidates = self._n_candidates(n, size)
            search_k = self._search_k(n_candidates)
            if size <= max(self.brute_force_max_rows, n_candidates) or (
                    index.scan is None and size <= SCAN_BELOW * search_k):
                parts.append(index.rows)
            elif size <= SCAN_BELOW * search_k:
                scores = index.scan @ query.scan
                parts.append(index.rows[np.argpartition(scores, n_candidates - 1)[:n_candidates]])
            else:
                found = index.annoy.get_nns_by_vector(query.annoy, n_candidates, search_k)
                parts.append(index.rows[found])
        candidates = np.concatenate(parts)
        owner = np.repeat(np.arange(len(parts)), [len(part) for part in parts])
        keep = candidates != query.row
        candidates, owner = candidates[keep], owner[keep]
        vectors = np.take(loaded.vectors, candidates, axis=0)
        order = np.lexsort((ranking_scores(vectors, query.vector, self.metric), owner))
        boundaries = np.searchsorted(owner[order], np.arange(len(parts) + 1))
        best = [order[start:min(stop, start + n)] for start, stop in zip(boundaries[:-1], boundaries[1:],
                                                                            strict=True)]
        kept = np.concatenate(best)
        distances = exact_distances(vectors[kept], query.vector, self.metric)
        results, start = [], 0
        for rows in best:
            found, start = distances[start:start + len(rows)], start + len(rows)
            order = np.argsort(-found if self.metric == "dot" else found, kind="stable")
            results.append((candidates[rows[order]], found[order]))
        return results

    def _query(self, loaded: _Loaded, urn: str) -> _Query:
        row = loaded.store.row_of(urn)  # KeyError naming the urn
        return self._vector_query(loaded, np.array(loaded.vectors[row]), row)

    @staticmethod
    def _vector_query(loaded: _Loaded, vector: np.ndarray, row: int = -1) -> _Query:
        """A query for `vector`; `row` is its own store row (left out of its results), -1 for none."""
        projected = loaded.project.query(vector)
        return _Query(row, vector, projected.tolist(), loaded.project.scan_query(projected))

    def _neighbours(self, loaded: _Loaded, rows: np.ndarray, distances: np.ndarray,
                    vectors: bool) -> list[dict]:
        items = loaded.store.items
        neighbours = []
        for row, distance in zip(rows.tolist(), distances.tolist(), strict=True):
            neighbour = self._describe(items[row], distance=distance)
            if vectors:
                neighbour["vector"] = loaded.vectors[row].tolist()
            neighbours.append(neighbour)
        return neighbours

    @staticmethod
    def _describe(item: dict, **first: object) -> dict:
        """An item as the JSON shows it: urn, (distance), date, year, path, then its metadata columns."""
        metadata = item.get("metadata") or {}
        described = {"urn": item["urn"], **first, "date": item["date"], "year": item["year"],
                     "path": item["path"], **metadata}
        if not RESERVED.isdisjoint(metadata):  # a metadata column never hides a field of the item
            described = {"urn": item["urn"], **first, "date": item["date"], "year": item["year"],
                         "path": item["path"]}
            described.update((name, value) for name, value in metadata.items() if name not in RESERVED)
        return described

    def _periods(self, loaded: _Loaded, query: _Query, step: int, n: int, vectors: bool) -> list[dict]:
        indices = loaded.steps[step]
        found = self._search(loaded, query, indices, n)
        return [{"period": index.period.label, "start": index.period.start, "end": index.period.end,
                 "neighbours": self._neighbours(loaded, rows, distances, vectors)}
                for index, (rows, distances) in zip(indices, found, strict=True)]

    def _check_step(self, step: object) -> int:
        if step not in self.step_sizes or isinstance(step, bool):
            raise ValueError(f"step must be one of this indexer's step_sizes "
                             f"{', '.join(map(str, self.step_sizes))} (or None for the whole collection), "
                             f"got {step!r}")
        return int(step)

    def query(self, urn: str, n: int = 10, step: int | None = None) -> list[dict]:
        """The n nearest neighbours of `urn`: in the whole collection (step None), or within every period
        of `step` (a list of period dicts, as in query_all). KeyError naming the urn if it is unknown."""
        n = _positive_int(n, "n")
        if step is not None:
            return self._query_steps(urn, {self._check_step(step): n}, vectors=False)["steps"][str(step)]
        loaded = self._ensure_loaded()
        [(rows, distances)] = self._search(loaded, self._query(loaded, urn), [loaded.whole], n)
        return self._neighbours(loaded, rows, distances, vectors=False)

    def query_all(self, urn: str, n_nns: int | Sequence[int] = (5,), vectors: bool = False, *,
                  step_sizes: int | Sequence[int] | None = None, exclude_self: bool = True) -> dict:
        """For every step size, the nearest neighbours of `urn` within every period (JSON-serialisable).

        `n_nns`: one n per step size in `step_sizes` order, or a single n for all of them. Returns
        {"urn", "metadata": {date, year, path, ...metadata columns}, "steps": {"10": [{"period": "1950-1959",
        "start": 1950, "end": 1959, "neighbours": [{"urn", "distance", "date", "year", "path", ...}]}]}}
        with every period from the collection's first year to its last, empty ones included, and the
        neighbours best first; `vectors` adds "vector" to the query's and every neighbour's dict.

        The original Siamese's keywords mean what they meant there: `step_sizes` queries only these of the
        indexer's step sizes (None or []: all), n_nns then giving one n per step size listed; a step size
        the indexer does not have is a ValueError (the original answered {}). `exclude_self=False` keeps
        the query itself, as a neighbour at its own distance, in its own period (the original's default;
        ours leaves it out, since an image is trivially most similar to itself).
        """
        steps = self.step_sizes
        if step_sizes is not None and (isinstance(step_sizes, Integral) or list(step_sizes)):
            steps = [self._check_step(step) for step in
                     ([step_sizes] if isinstance(step_sizes, Integral) else list(dict.fromkeys(step_sizes)))]
        n_per_step = self._n_per_step(n_nns, steps)
        result = self._query_steps(urn, n_per_step, vectors)
        if not exclude_self:
            self._add_self(result, n_per_step, vectors)
        return result

    def _add_self(self, result: dict, n_per_step: dict[int, int], vectors: bool) -> None:
        """Put the query among its own period's n neighbours, where its distance ranks it."""
        loaded = self._ensure_loaded()
        row = loaded.store.row_of(result["urn"])
        vector = np.array(loaded.vectors[row])
        itself = self._describe(loaded.store.items[row],
                                distance=float(exact_distances(vector[None, :], vector, self.metric)[0]))
        if vectors:
            itself["vector"] = vector.tolist()
        year, sign = result["metadata"]["year"], -1 if self.metric == "dot" else 1
        for step, n in n_per_step.items():
            for period in result["steps"][str(step)]:
                if period["start"] <= year <= period["end"]:
                    ranked = sorted([dict(itself), *period["neighbours"]],  # stable: itself first on ties
                                    key=lambda found: sign * found["distance"])
                    period["neighbours"] = ranked[:n]

    def _n_per_step(self, n_nns: int | Sequence[int], steps: Sequence[int] | None = None) -> dict[int, int]:
        """{step: n} for `steps` (default: every step size); ValueError saying what is allowed."""
        steps = self.step_sizes if steps is None else steps
        if isinstance(n_nns, Integral):
            values = [n_nns]
        elif isinstance(n_nns, Sequence) and not isinstance(n_nns, str):
            values = list(n_nns)
        else:
            values = []
        if len(values) not in (1, len(steps)) or any(
                isinstance(n, bool) or not isinstance(n, Integral) or n < 1 for n in values):
            raise ValueError(f"n_nns must be a positive whole number, or a list of them: one for every step "
                             f"size or one per step size ({len(steps)} for step_sizes "
                             f"{steps}), got {n_nns!r}")
        if len(values) == 1:
            values = values * len(steps)
        return {step: int(n) for step, n in zip(steps, values, strict=True)}

    def _query_steps(self, urn: str, n_per_step: dict[int, int], vectors: bool) -> dict:
        loaded = self._ensure_loaded()
        query = self._query(loaded, urn)
        described = self._describe(loaded.store.items[query.row])
        result = {"urn": described.pop("urn"), "metadata": described}
        if vectors:
            result["vector"] = query.vector.tolist()
        result["steps"] = {str(step): self._periods(loaded, query, step, n, vectors)
                           for step, n in n_per_step.items()}
        return result

    # ---------------------------------------------------------------- querying by a vector or an image

    @property
    def model(self) -> str:
        """The model the store's vectors come from: a query image must be embedded with it."""
        return VectorStore(self.vector_dir).model if self._loaded is None else self._loaded.store.model

    def query_vector(self, vector: Sequence[float] | np.ndarray, n: int = 10,
                     step: int | None = None) -> list[dict]:
        """The n nearest neighbours of any vector of the store's model (e.g. of an image from outside
        the collection): as `query` answers, a list of neighbours (step None: the whole collection) or a
        list of period dicts (a step size). ValueError for a vector of the wrong shape or not finite."""
        n = _positive_int(n, "n")
        step = None if step is None else self._check_step(step)
        loaded = self._ensure_loaded()
        query = self._vector_query(loaded, self._check_vector(vector, loaded.store))
        if step is not None:
            return self._periods(loaded, query, step, n, vectors=False)
        [(rows, distances)] = self._search(loaded, query, [loaded.whole], n)
        return self._neighbours(loaded, rows, distances, vectors=False)

    def _check_vector(self, vector: Sequence[float] | np.ndarray, store: VectorStore) -> np.ndarray:
        try:
            array = np.asarray(vector, dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError(f"vector must be a sequence of {store.n_dimensions} numbers") from None
        if array.ndim == 2 and array.shape[0] == 1:
            array = array[0]
        if array.shape != (store.n_dimensions,):
            raise ValueError(f"vector must have {store.n_dimensions} values (the {store.model!r} vectors "
                             f"of {self.vector_dir}), got shape {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError("vector holds NaN or infinite values")
        return np.ascontiguousarray(array)

    def embed_image(self, image: str | os.PathLike | Image.Image,
                    embedder: Embedder | None = None) -> np.ndarray:
        """The vector of an image (a path or a PIL image) by the store's own model.

        `embedder`: that model, already loaded; None loads it once per process (backbones.shared_embedder).
        ImageRejected (with the reason) for a file that is not a usable image.
        """
        backbone = get_backbone(self.model)
        if isinstance(image, Image.Image):
            pixels = model_input_from_image(image, backbone.input_size)
        else:
            pixels = load_model_input(image, backbone.input_size)
        embedder = embedder if embedder is not None else shared_embedder(backbone.name)
        return np.asarray(embedder(pixels[None]), dtype=np.float32)[0]

    def query_image(self, image: str | os.PathLike | Image.Image, n: int = 10, step: int | None = None,
                    embedder: Embedder | None = None) -> list[dict]:
        """query_vector for an image (a path or a PIL image), embedded with the store's model."""
        return self.query_vector(self.embed_image(image, embedder), n=n, step=step)


# -------------------------------------------------------------------- command line

class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus a pointer to --help), like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="annoy_indexer.py", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="examples:\n"
                            "  python annoy_indexer.py build vectors indices-eucl --steps 10 1\n"
                            "  python annoy_indexer.py query vectors indices-eucl URN --nns 10 --step 1\n\n"
                            "Each command's --help says more; how the indices work is in the module's "
                            "docstring.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    build = commands.add_parser(
        "build", help="build the missing or stale indices of a vector store",
        description="Build one Annoy index for the whole collection and one per period for each step "
                    "size. Only what is missing or stale is built; an interrupted build resumes.")
    build.add_argument("vector_dir", metavar="VECTOR_DIR", help="the vector store (from extract_vectors.py)")
    build.add_argument("index_dir", metavar="INDEX_DIR", help="where the indices and index.json go")
    build.add_argument("--steps", type=int, nargs="+", default=[10, 1], metavar="YEARS",
                       help="period lengths in years, aligned to calendar multiples (default: 10 1)")
    build.add_argument("--metric", choices=METRICS, default="euclidean", help="distance (default: euclidean)")
    build.add_argument("--trees", type=int, default=None, metavar="N",
                       help=f"Annoy trees per index (default: the index dir's, or {DEFAULT_N_TREES})")
    build.add_argument("--index-dimensions", type=int, default=None, metavar="K",
                       help="dimensions of the PCA projection Annoy indexes (default: the index dir's, or "
                            f"{DEFAULT_INDEX_DIMENSIONS}); the store's dimensions or more: no projection")
    build.add_argument("--force", action="store_true",
                       help="rebuild everything, replacing indices of another metric, model or setting")
    build.add_argument("--quiet", action="store_true", help="no progress bars")

    query = commands.add_parser(
        "query", help="print the neighbours of an item within every period, as JSON",
        description="Print the nearest neighbours of URN within every period of every step size (JSON). "
                    "Indices that are missing are built first, with the index dir's settings.")
    query.add_argument("vector_dir", metavar="VECTOR_DIR", help="the vector store")
    query.add_argument("index_dir", metavar="INDEX_DIR", help="the index directory")
    query.add_argument("urn", metavar="URN", help="the item to find neighbours of")
    query.add_argument("--nns", type=int, nargs="+", default=[5], metavar="N",
                       help="neighbours per period: one number for every step, or one per step (default: 5)")
    query.add_argument("--step", type=int, default=None, metavar="YEARS",
                       help="only this step size (default: every step size the index dir was built with)")
    query.add_argument("--vectors", action="store_true", help="include the vectors in the JSON")
    query.add_argument("--quiet", action="store_true", help="no progress bars if indices must be built")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    try:
        if arguments.command == "build":
            indexer = AnnoyIndexer(arguments.vector_dir, arguments.index_dir, metric=arguments.metric,
                                   step_sizes=arguments.steps, n_trees=arguments.trees,
                                   index_dimensions=arguments.index_dimensions, verbose=not arguments.quiet)
            report = indexer.build(force=arguments.force)
            print(f"{report['built']} indices built, {report['up_to_date']} up to date, "
                  f"{report['empty']} empty periods, in {report['seconds']:.1f} s ({arguments.index_dir})")
        else:
            manifest = read_manifest(arguments.index_dir) or {}
            steps = [int(key) for key in manifest.get("complete", {}) if key != WHOLE] or [10, 1]
            if arguments.step is not None:
                steps = [arguments.step] if arguments.step in steps else steps
            indexer = AnnoyIndexer(arguments.vector_dir, arguments.index_dir,
                                   metric=manifest.get("metric", "euclidean"), step_sizes=steps,
                                   verbose=not arguments.quiet)
            result = indexer.query_all(arguments.urn, arguments.nns, vectors=arguments.vectors,
                                       step_sizes=None if arguments.step is None else [arguments.step])
            print(json.dumps(result, ensure_ascii=False, indent=1))
    except BrokenPipeError:  # `... | head` closed the pipe: not an error of ours or of the input
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyError as error:
        print(f"annoy_indexer.py: error: {error.args[0] if error.args else error}", file=sys.stderr)
        return 2
    except (ValueError, OSError, StoreError) as error:
        print(f"annoy_indexer.py: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("annoy_indexer.py: interrupted; run again to resume (finished indices are kept)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
