"""Nearest neighbours of an image in the whole collection and within every period of its timeline.

    python annoy_indexer.py build VECTOR_DIR INDEX_DIR [--steps 10 1] [--metric euclidean] [--trees N]
    python annoy_indexer.py query VECTOR_DIR INDEX_DIR URN [--nns 5] [--step 10] [--vectors]
    python annoy_indexer.py verify VECTOR_DIR INDEX_DIR

One Annoy index covers the whole collection and one covers each period (1940-1949, 1950-1959, ... and
1940, 1941, ... for steps 10 and 1), so "the 10 most similar images of 1953" is a search in the 1953
index, not a filter over the whole collection's neighbours (which would come back empty for thin years).

`AnnoyIndexer` is the notebook's way in (the original Siamese's API, kept): it checks its arguments and
hands the work to the modules that own it (docs/architecture.md):

    siamese/index_build.py   which indices are stale, the projection, writing them (build)
    siamese/index_dir.py     the files and the manifest index.json
    siamese/search.py        loaded indices, candidates and exact re-ranking (how a query works, and why)
    siamese/answers.py       rows and distances -> the JSON answers
    siamese/collection.py    one store + its search core, shared with the web app

"distance" follows Annoy's conventions: euclidean and manhattan are the usual distances, angular is
sqrt(2 - 2 cos), the euclidean distance between the unit-length vectors, and dot is the dot product
itself, so for dot larger means closer and neighbours come by decreasing "distance".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Iterable, Sequence
from numbers import Integral
from pathlib import Path

import numpy as np
from PIL import Image

from siamese.backbones import Embedder, embed_image
from siamese.cli import Parser, run_command
from siamese.collection import Collection
from siamese.descriptors import DEFAULT_DESCRIPTOR_DIMENSIONS, DESCRIPTORS
from siamese.index_build import (
    BACKENDS,
    DEFAULT_INDEX_DIMENSIONS,
    DEFAULT_N_TREES,
    IndexConfig,
    build_indices,
    positive_int,
    step_sizes_of,
)
from siamese.index_dir import WHOLE, built_step_sizes, read_manifest
from siamese.index_dir import verify as verify_indices
from siamese.map_files import MapDamaged, read_map_manifest, verify_map
from siamese.projection import METRICS, exact_distances
from siamese.qdrant_index import QdrantCandidates, QdrantLocation, QdrantUnavailable
from siamese.reprints import MAX_CANDIDATES
from siamese.search import SearchSettings
from siamese.vector_store import StoreError, VectorStore

__all__ = ["METRICS", "AnnoyIndexer", "SearchSettings", "exact_distances", "main", "read_manifest"]


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
    search_k : Annoy's search_k for each tree search; None: 500 times the number of candidates kept
        (see SearchSettings, which `search_settings` replaces as a whole).
    index_dimensions : dimensions of the PCA projection that Annoy indexes; None: the index directory's
        setting, or 128 for a new one; the descriptors' dimensions or more indexes them as they are.
    n_jobs : threads Annoy builds trees with; -1 uses every core.
    verbose : show build progress (tqdm, on stderr).
    search_settings : how hard a search looks (siamese.search.SearchSettings); None: the defaults.
    descriptor : what is searched (siamese/descriptors.py): 'whitened', the stored vectors' signed
        square root PCA-whitened on the collection itself (finds re-scanned and reprinted copies far
        better, docs/quality.md), or 'raw', the stored vectors as they are; None: the index directory's
        setting, or 'whitened' for a new one. The stored vectors never change either way.
    descriptor_dimensions : dimensions the whitening keeps; None: the directory's, or 256.
    thumbnail_dir, images_root : the collection's thumbnails (make_thumbnails.py), or the folder its
        image paths are relative to: what query_all(..., reprints=K) checks reprints on (the originals
        when images_root is given).
    backend : 'annoy' (files in index_dir) or 'qdrant' (a Qdrant collection, for collections beyond one
        machine: docs/scale-out.md); None: the index directory's, or 'annoy' for a new one ('qdrant'
        when qdrant_url or qdrant_path is given). Chosen at build time and recorded in the manifest:
        later indexers over the directory need not say it again.
    qdrant_url, qdrant_path : the Qdrant server (its API key from the QDRANT_API_KEY variable), or a
        folder for qdrant-client's local mode (one process; tests and small collections); None: where
        the directory's collection is.
    qdrant_collection : the prefix of the collection's name on the server (None: one derived from
        index_dir).
    qdrant_shards, qdrant_replicas : a new collection's shard_number and replication_factor on a Qdrant
        cluster (None: the server's defaults).

    An index directory holds one configuration (metric, model, n_dimensions, descriptor,
    descriptor_dimensions, index_dimensions, n_trees); asking for another is a ValueError unless
    build(force=True) replaces it. Distances are those between descriptors.
    """

    def __init__(self, vector_dir: str | os.PathLike = "vectors",
                 index_dir: str | os.PathLike = "indices-eucl", n_dimensions: int | None = None,
                 metric: str = "euclidean",
                 step_sizes: Iterable[int] = (10, 1), n_trees: int | None = None,
                 search_k: int | None = None, index_dimensions: int | None = None, n_jobs: int = -1,
                 verbose: bool = True, search_settings: SearchSettings | None = None,
                 descriptor: str | None = None, descriptor_dimensions: int | None = None,
                 thumbnail_dir: str | os.PathLike | None = None,
                 images_root: str | os.PathLike | None = None, backend: str | None = None,
                 qdrant_url: str | None = None, qdrant_path: str | os.PathLike | None = None,
                 qdrant_collection: str | None = None, qdrant_shards: int | None = None,
                 qdrant_replicas: int | None = None) -> None:
        self.vector_dir = Path(vector_dir)
        self.index_dir = Path(index_dir)
        self.thumbnail_dir = None if thumbnail_dir is None else Path(thumbnail_dir)
        self.images_root = None if images_root is None else Path(images_root)
        qdrant = None
        if qdrant_url is not None or qdrant_path is not None:
            qdrant = QdrantLocation(qdrant_url, None if qdrant_path is None else str(qdrant_path),
                                    qdrant_collection, qdrant_shards, qdrant_replicas)
            backend = "qdrant" if backend is None else backend
        elif (qdrant_collection, qdrant_shards, qdrant_replicas) != (None, None, None):
            raise ValueError("qdrant_collection, qdrant_shards and qdrant_replicas need qdrant_url or "
                             "qdrant_path")
        self._config = IndexConfig(metric, step_sizes_of(step_sizes), n_trees, index_dimensions,
                                   descriptor, descriptor_dimensions, backend, qdrant)
        self.search_k = None if search_k is None else positive_int(search_k, "search_k")
        settings = search_settings or SearchSettings()
        if self.search_k is not None:
            settings = SearchSettings(**{**settings.__dict__, "search_k": self.search_k})
        self.search_settings = settings
        if isinstance(n_jobs, bool) or not isinstance(n_jobs, Integral) or not (n_jobs == -1 or n_jobs >= 1):
            raise ValueError(f"n_jobs must be -1 (every core) or a positive whole number, got {n_jobs!r}")
        self.n_jobs = int(n_jobs)
        self.verbose = verbose
        store = VectorStore(self.vector_dir)
        if n_dimensions is not None and positive_int(n_dimensions, "n_dimensions") != store.n_dimensions:
            raise ValueError(f"n_dimensions={n_dimensions} but the vector store {self.vector_dir} holds "
                             f"{store.n_dimensions}-d vectors (of model {store.model!r})")
        self.n_dimensions = store.n_dimensions
        self._collection: Collection | None = None
        self._load_lock = threading.Lock()

    # ---------------------------------------------------------------- configuration

    @property
    def metric(self) -> str:
        return self._config.metric

    @property
    def step_sizes(self) -> list[int]:
        return list(self._config.step_sizes)

    @property
    def n_trees(self) -> int | None:
        return self._config.n_trees

    @property
    def index_dimensions(self) -> int | None:
        return self._config.index_dimensions

    @property
    def descriptor(self) -> str | None:
        return self._config.descriptor

    @property
    def descriptor_dimensions(self) -> int | None:
        return self._config.descriptor_dimensions

    def _reconfigure(self, **changes: object) -> None:
        """A new configuration (never a change to the one a loaded collection uses)."""
        config = self._config
        self._config = IndexConfig(**{**config.__dict__, **changes})
        if self._config != config:
            self._collection = None

    # ---------------------------------------------------------------- building and loading

    def build(self, force: bool = False, *, n_trees: int | None = None,
              step_sizes: int | Iterable[int] | None = None) -> dict:
        """Build the indices that are missing or stale; `force` rebuilds everything.

        `n_trees` and `step_sizes` (keywords) replace the indexer's settings first, so that the original
        Siamese's `indexer.build(n_trees=100, step_sizes=[10, 1])` works as its README says.

        Returns {"built", "up_to_date", "empty", "seconds_by_index", "seconds"}: how many indices (the
        whole collection's and every period's) were built now, were already current, or are not needed
        (empty periods); the wall time, and its split into "projection" (fitting the PCA and projecting
        the rows to index), "all" and each step size. Safe to interrupt: re-running keeps what was finished.
        """
        if n_trees is not None:
            self._reconfigure(n_trees=positive_int(n_trees, "n_trees"))
        if step_sizes is not None:
            self._reconfigure(step_sizes=step_sizes_of(step_sizes))
        report = build_indices(VectorStore(self.vector_dir), self.index_dir, self._config, force=force,
                               n_jobs=self.n_jobs, verbose=self.verbose)
        self._collection = None
        return report.as_dict()

    def load(self, step_sizes: int | Iterable[int] | None = None) -> AnnoyIndexer:
        """Load the indices now (building what is missing), rather than on the first query.

        The original Siamese's `load(step_sizes=[10])`: the step sizes to query from now on; None or []
        keeps the indexer's own (the original loaded every step size it found). Returns the indexer.
        """
        if step_sizes is not None and not (isinstance(step_sizes, Iterable) and not list(step_sizes)):
            self._reconfigure(step_sizes=step_sizes_of(step_sizes))
        self.collection()
        return self

    def collection(self) -> Collection:
        """The loaded collection (store + search core) the queries read; the first call loads it,
        building what is missing or stale first. Threads may share an indexer (queries only read)."""
        collection = self._collection
        if collection is not None:
            return collection
        with self._load_lock:
            if self._collection is None:
                self._collection = Collection(self.vector_dir, self.index_dir, self.thumbnail_dir,
                                              self.verbose, config=self._config,
                                              settings=self.search_settings, n_jobs=self.n_jobs,
                                              images_root=self.images_root)
            return self._collection

    # ---------------------------------------------------------------- querying

    def _check_step(self, step: object) -> int:
        if step not in self.step_sizes or isinstance(step, bool):
            raise ValueError(f"step must be one of this indexer's step_sizes "
                             f"{', '.join(map(str, self.step_sizes))} (or None for the whole collection), "
                             f"got {step!r}")
        return int(step)

    def query(self, urn: str, n: int = 10, step: int | None = None) -> list[dict]:
        """The n nearest neighbours of `urn`: in the whole collection (step None), or within every period
        of `step` (a list of period dicts, as in query_all). KeyError naming the urn if it is unknown."""
        return self._query(urn, n, step)

    def _query(self, query: str | np.ndarray, n: int, step: int | None) -> list[dict]:
        n = positive_int(n, "n")
        step = None if step is None else self._check_step(step)
        periods = self.collection().periods(query, {step: n})[WHOLE if step is None else str(step)]
        return periods[0]["neighbours"] if step is None else periods

    def query_all(self, urn: str, n_nns: int | Sequence[int] = (5,), vectors: bool = False, *,
                  step_sizes: int | Sequence[int] | None = None, exclude_self: bool = True,
                  reprints: int = 0) -> dict:
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

        `reprints`: check the `reprints` nearest images for being the same printed image as `urn`
        (another scan, a reprint; siamese/reprints.py), on the thumbnails (`thumbnail_dir`) or the
        originals (`images_root`) given to the indexer: verified ones come first in their periods and
        are marked "reprint": true with their "inliers", each period counts its "reprints", and the
        result says what was checked under "reprints". ValueError when the indexer has no images.
        """
        steps = self.step_sizes
        if step_sizes is not None and (isinstance(step_sizes, Integral) or list(step_sizes)):
            steps = [self._check_step(step) for step in
                     ([step_sizes] if isinstance(step_sizes, Integral) else list(dict.fromkeys(step_sizes)))]
        n_per_step = self._n_per_step(n_nns, steps)
        if isinstance(reprints, bool) or not isinstance(reprints, Integral) or \
                not 0 <= reprints <= MAX_CANDIDATES:
            raise ValueError(f"reprints must be a whole number from 0 to {MAX_CANDIDATES}, got {reprints!r}")
        collection = self.collection()
        result = collection.item(urn, vectors)
        if reprints:
            result["steps"], result["reprints"] = collection.periods_with_reprints(
                urn, n_per_step, int(reprints), vectors, include_self=not exclude_self)
        else:
            result["steps"] = collection.periods(urn, n_per_step, vectors, include_self=not exclude_self)
        return result

    def _n_per_step(self, n_nns: int | Sequence[int], steps: Sequence[int]) -> dict[int | None, int]:
        """{step: n} for `steps`; ValueError saying what is allowed."""
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
                             f"{list(steps)}), got {n_nns!r}")
        if len(values) == 1:
            values = values * len(steps)
        return {step: int(n) for step, n in zip(steps, values, strict=True)}

    # ---------------------------------------------------------------- querying by a vector or an image

    @property
    def model(self) -> str:
        """The model the store's vectors come from: a query image must be embedded with it."""
        return VectorStore(self.vector_dir).model if self._collection is None else self._collection.model

    def query_vector(self, vector: Sequence[float] | np.ndarray, n: int = 10,
                     step: int | None = None) -> list[dict]:
        """The n nearest neighbours of any vector of the store's model (e.g. of an image from outside
        the collection): as `query` answers, a list of neighbours (step None: the whole collection) or a
        list of period dicts (a step size). ValueError for a vector of the wrong shape or not finite."""
        n = positive_int(n, "n")
        step = None if step is None else self._check_step(step)
        return self._query(self.collection().check_vector(vector), n, step)

    def embed_image(self, image: str | os.PathLike | Image.Image,
                    embedder: Embedder | None = None) -> np.ndarray:
        """The vector of an image (a path or a PIL image) by the store's own model and input mode.

        `embedder`: that model, already loaded; None loads it once per process (backbones.shared_embedder).
        ImageRejected (with the reason) for a file that is not a usable image.
        """
        if self._collection is not None:
            return self._collection.embed(image, embedder)
        return embed_image(image, self.model, embedder, VectorStore(self.vector_dir).input_mode)

    def query_image(self, image: str | os.PathLike | Image.Image, n: int = 10, step: int | None = None,
                    embedder: Embedder | None = None) -> list[dict]:
        """query_vector for an image (a path or a PIL image), embedded with the store's model."""
        return self.query_vector(self.embed_image(image, embedder), n=n, step=step)


# -------------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="annoy_indexer.py", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="examples:\n"
                            "  python annoy_indexer.py build vectors indices-eucl --steps 10 1\n"
                            "  python annoy_indexer.py query vectors indices-eucl URN --nns 10 --step 1\n\n"
                            "Each command's --help says more; how the indices work is in the module's "
                            "docstring.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
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
    build.add_argument("--descriptor", choices=DESCRIPTORS, default=None,
                       help="what is searched: 'whitened' (the vectors' signed square root, PCA-whitened "
                            "on the collection: finds re-scanned and reprinted copies) or 'raw' (the "
                            "vectors as they are); default: the index dir's, or whitened")
    build.add_argument("--descriptor-dimensions", type=int, default=None, metavar="D",
                       help="dimensions the whitening keeps (default: the index dir's, or "
                            f"{DEFAULT_DESCRIPTOR_DIMENSIONS})")
    build.add_argument("--backend", choices=BACKENDS, default=None,
                       help="where each period's candidates come from: 'annoy' (files in INDEX_DIR) or "
                            "'qdrant' (a Qdrant collection, for collections beyond one machine: "
                            "pip install '.[qdrant]', docs/scale-out.md); default: the index dir's, or "
                            "annoy ('qdrant' when a --qdrant-url or --qdrant-path is given)")
    build.add_argument("--qdrant-url", metavar="URL",
                       help="the Qdrant server, e.g. http://localhost:6333 (its API key from the "
                            "QDRANT_API_KEY variable)")
    build.add_argument("--qdrant-path", metavar="DIR",
                       help="a folder for qdrant-client's local mode instead of a server (one process at a "
                            "time; tests and small collections)")
    build.add_argument("--qdrant-collection", metavar="NAME",
                       help="the prefix of the collection's name on the server (default: derived from "
                            "INDEX_DIR)")
    build.add_argument("--qdrant-shards", type=int, metavar="N",
                       help="a new collection's shards on a Qdrant cluster (default: the server's)")
    build.add_argument("--qdrant-replicas", type=int, metavar="N",
                       help="copies of each shard on a Qdrant cluster (default: the server's)")
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
    query.add_argument("--step", type=step_argument, default=None, metavar="YEARS|all",
                       help="only this step size, or 'all': the whole collection as one period (default: "
                            "every step size the index dir was built with)")
    query.add_argument("--format", choices=("json", "table"), default="json",
                       help="json (default): the whole answer; table: one line per neighbour (period, urn, "
                            "distance), for reading")
    query.add_argument("--vectors", action="store_true", help="include the vectors in the JSON")
    query.add_argument("--quiet", action="store_true", help="no progress bars if indices must be built")

    verify = commands.add_parser(
        "verify", help="check every stored byte and index file against its checksum",
        description="Check the vector store (every row against its checksum, values in range) and every "
                    "index file (size and checksum). Says what is damaged and how to repair it; exit "
                    "status 0 when all is well, 1 when something is damaged.")
    verify.add_argument("vector_dir", metavar="VECTOR_DIR", help="the vector store")
    verify.add_argument("index_dir", metavar="INDEX_DIR", help="the index directory")
    return parser


WHOLE_COLLECTION = "all"


def step_argument(value: str) -> int | str:
    """--step: 'all' (the whole collection) or a step size in whole years."""
    if value.strip().lower() == WHOLE_COLLECTION:
        return WHOLE_COLLECTION
    try:
        step = int(value)
    except ValueError:
        step = 0
    if step < 1:
        raise argparse.ArgumentTypeError(f"takes 'all' (the whole collection) or a step size in whole years "
                                         f"(10: decades, 1: years), not {value!r}")
    return step


def answer_table(result: dict) -> str:
    """An answer as lines to read: period, urn, distance (a period without neighbours says so)."""
    lines = []
    for step, periods in result["steps"].items():
        for period in periods:
            label = "whole collection" if step == WHOLE_COLLECTION else period["period"]
            if not period["neighbours"]:
                lines.append(f"{label:<16}  (no other images)")
            for neighbour in period["neighbours"]:
                lines.append(f"{label:<16}  {neighbour['urn']:<40}  {neighbour['distance']:.4f}")
    return "\n".join([f"{'period':<16}  {'urn':<40}  distance", *lines])


def query_command(arguments: argparse.Namespace) -> int:
    """The `query` command: the neighbours of a urn, as JSON or as a table."""
    manifest = read_manifest(arguments.index_dir) or {}
    built = built_step_sizes(manifest)
    step = arguments.step
    if step not in (None, WHOLE_COLLECTION) and built and step not in built:
        steps = " ".join(map(str, sorted({*built, step}, reverse=True)))
        raise ValueError(f"no indices for step {step} in {arguments.index_dir}: it has "
                         f"{', '.join(map(str, built))} and all (the whole collection); build them with: "
                         f"python annoy_indexer.py build {arguments.vector_dir} {arguments.index_dir} "
                         f"--steps {steps}")
    asked = [step] if step is not None else built or [10, 1]
    if any(n < 1 for n in arguments.nns) or len(arguments.nns) not in (1, len(asked)):
        raise ValueError(f"--nns takes one whole number from 1, or one per step size ({len(asked)} for "
                         f"{', '.join(map(str, asked))}), got {' '.join(map(str, arguments.nns))}")
    indexer = AnnoyIndexer(arguments.vector_dir, arguments.index_dir,
                           metric=manifest.get("metric", "euclidean"), step_sizes=built or [10, 1],
                           verbose=not arguments.quiet)
    if step == WHOLE_COLLECTION:
        result = indexer.collection().neighbours(arguments.urn, arguments.nns[0], (None,), arguments.vectors)
    else:
        result = indexer.query_all(arguments.urn, arguments.nns, vectors=arguments.vectors,
                                   step_sizes=None if step is None else [step])
    print(answer_table(result) if arguments.format == "table" else
          json.dumps(result, ensure_ascii=False, indent=1))
    return 0


def verify_collection(vector_dir: Path, index_dir: Path) -> int:
    """The `verify` command: what is damaged, and how to repair it."""
    if read_manifest(index_dir) is None:  # nothing to check is a mistake in the command, not damage
        raise ValueError(f"no indices in {index_dir}; build them with: python annoy_indexer.py build "
                         f"{vector_dir} {index_dir}")
    store = VectorStore(vector_dir)  # StoreError (status 2) when it is no vector store at all
    damaged = False
    try:
        store.verify()
    except StoreError as error:
        print(f"damaged: {error}")
        return 1
    if not store.has_checksums:
        print(f"warning: {vector_dir} was written before stores had checksums: its rows cannot be checked; "
              "appending to it (extract_vectors.py) records checksums from then on")
    unusable = store.count_unusable_rows()
    if unusable:
        damaged = True
        print(f"damaged: {unusable} rows of {vector_dir} hold NaN, infinite or out-of-range values; they "
              "are never answered; re-extract into a new vector directory to drop them")
    else:
        print(f"ok: {vector_dir}: {store.count:,} rows match their checksums")
    checked, problems = verify_indices(Path(index_dir))
    record = (read_manifest(index_dir) or {}).get("qdrant")
    if record:  # the Qdrant backend: its collection still there, with every point loaded
        try:
            QdrantCandidates(record, store.count)
            print(f"ok: the Qdrant collection {record['collection']} holds the {record['points']:,} points "
                  "loaded")
        except (FileNotFoundError, QdrantUnavailable) as error:
            problems.append(str(error))
    for problem in problems:
        print(f"damaged: {problem}")
    if problems:
        print(f"repair: python annoy_indexer.py build {vector_dir} {index_dir} rebuilds the damaged indices "
              "(--force rebuilds everything)")
    else:
        print(f"ok: {index_dir}: {checked} index files match their checksums")
    return 1 if damaged or problems or not map_is_whole(vector_dir, index_dir) else 0


def map_is_whole(vector_dir: Path, index_dir: Path) -> bool:
    """The collection map beside the indices (make_map.py), if one was made: every file against its
    checksum; printed as the indices are."""
    try:
        manifest = read_map_manifest(index_dir)
        if manifest is None:
            return True
        checked = verify_map(Path(index_dir), manifest)
    except MapDamaged as error:
        print(f"damaged: the map: {error}")
        print(f"repair: python make_map.py {vector_dir} {index_dir} --force makes the map again")
        return False
    print(f"ok: {index_dir}: the map's {checked} files match their checksums")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)

    def command() -> int:
        if arguments.command == "verify":
            return verify_collection(Path(arguments.vector_dir), Path(arguments.index_dir))
        if arguments.command == "build":
            indexer = AnnoyIndexer(arguments.vector_dir, arguments.index_dir, metric=arguments.metric,
                                   step_sizes=arguments.steps, n_trees=arguments.trees,
                                   index_dimensions=arguments.index_dimensions, verbose=not arguments.quiet,
                                   descriptor=arguments.descriptor,
                                   descriptor_dimensions=arguments.descriptor_dimensions,
                                   backend=arguments.backend, qdrant_url=arguments.qdrant_url,
                                   qdrant_path=arguments.qdrant_path,
                                   qdrant_collection=arguments.qdrant_collection,
                                   qdrant_shards=arguments.qdrant_shards,
                                   qdrant_replicas=arguments.qdrant_replicas)
            report = indexer.build(force=arguments.force)
            print(f"{report['built']} indices built, {report['up_to_date']} up to date, "
                  f"{report['empty']} empty periods, in {report['seconds']:.1f} s ({arguments.index_dir})")
            return 0
        return query_command(arguments)

    return run_command("annoy_indexer.py", command, (KeyError, ValueError, OSError, StoreError),
                       "run again to resume (finished indices are kept)")


if __name__ == "__main__":
    sys.exit(main())
