"""A collection as the web app and notebooks see it: one vector store, its search core, its thumbnails.

Everything is opened once and then only read (thread-safe). The store is opened once and shared with
the search core, so a process holds one copy of the items. One consistent snapshot: when the store
grew since the indices were built, the missing indices are built before anything is answered (an
answer never mixes old indices with new rows); when the indices were built for a newer state of the
store than the one opened (an extraction and a build finished meanwhile), the store is opened again.
A damaged index file is never memory-mapped: it is rebuilt before the collection opens. A running
server picks up rebuilt indices through LiveCollection (a new Collection, swapped in whole).
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from siamese import answers
from siamese.backbones import Embedder, embed_image
from siamese.facets import Facets
from siamese.images import ImageRejected, open_rgb
from siamese.index_build import IndexConfig, build_indices
from siamese.index_dir import MANIFEST, WHOLE, IndexDamaged, built_step_sizes, read_manifest
from siamese.map_files import CollectionMap, MapDamaged, map_signature, open_map
from siamese.metadata import resolve_image_path
from siamese.reprints import (
    LOOK_DEEPER,
    MAX_CANDIDATES,
    WORKING_SIDE,
    FeatureCache,
    ImageFeatures,
    Verification,
    image_features,
    promote_reprints,
    verify,
)
from siamese.search import PeriodHits, Query, SearchCore, SearchSettings
from siamese.thumbnails import Thumbnails
from siamese.vector_store import StoreError, VectorStore


class CollectionError(ValueError):
    """The directories given do not make a servable collection; the message says how to fix that."""


class ReprintsUnavailable(ValueError):
    """Reprints were asked for but cannot be checked (no images, or none of the query); says why."""


def step_key(step: int | None) -> str:
    """The key of a step size in answers: "all" for the whole collection (None), else the size."""
    return WHOLE if step is None else str(step)


MAP_CHECK_SECONDS = 2.0  # how often a server looks for a map made again


class Collection:
    """The store, its indices and its thumbnails.

    config : the indices to use; None uses every step size built in `index_dir` with its settings
        (CollectionError when none was built). Missing or stale indices of `config` are built first.
    images_root : the folder the metadata's image paths are relative to (as extract_vectors.py's
        --images-root): reprints are then checked on the original images, else on the thumbnails.
    build : build missing or stale indices first (False: CollectionError instead; a running server
        picking up a rebuild never builds, see LiveCollection).
    """

    def __init__(self, vector_dir: str | os.PathLike, index_dir: str | os.PathLike,
                 thumbnail_dir: str | os.PathLike | None = None, verbose: bool = False, *,
                 config: IndexConfig | None = None, settings: SearchSettings | None = None,
                 n_jobs: int = -1, images_root: str | os.PathLike | None = None, build: bool = True) -> None:
        self.vector_dir = Path(vector_dir)
        self.index_dir = Path(index_dir)
        self.thumbnails = Thumbnails(thumbnail_dir)
        self.images_root = Path(images_root) if images_root is not None else None
        self._reprint_features = FeatureCache()
        self.store = VectorStore(self.vector_dir)
        manifest = read_manifest(self.index_dir)
        for _ in range(3):  # indices of a newer state of the store: open the store as it is now
            built_for = (manifest or {}).get("store") or {}
            if not isinstance(built_for.get("count"), int) or built_for["count"] <= self.store.count:
                break
            self.store = VectorStore(self.vector_dir)
            manifest = read_manifest(self.index_dir)
        if config is None:
            steps = built_step_sizes(manifest) if manifest else []
            if not steps:
                raise CollectionError(
                    f"no indices in {self.index_dir}; build them first with: python annoy_indexer.py build "
                    f"{self.vector_dir} {self.index_dir} --steps 10 1")
            config = IndexConfig(metric=manifest["metric"], step_sizes=tuple(steps))
        self.config = config
        if not config.is_current(self.index_dir, manifest, self.store):  # the build verifies the store
            if not build:
                raise CollectionError(f"the indices in {self.index_dir} do not cover the store as it is "
                                      f"now ({self.store.count} rows); build them first")
            build_indices(self.store, self.index_dir, config, n_jobs=n_jobs, verbose=verbose)
        else:
            self.store.verify()  # every committed byte against its checksum (StoreError naming the rows)
        try:
            self.core = SearchCore(self.store, self.index_dir, list(config.step_sizes), settings)
        except (FileNotFoundError, IndexDamaged) as error:  # deleted or damaged behind the manifest's back
            if not build:
                raise CollectionError(str(error)) from None
            print(f"{error}\nrebuilding what is missing or damaged", file=sys.stderr)
            build_indices(self.store, self.index_dir, config, n_jobs=n_jobs, verbose=verbose)
            try:
                self.core = SearchCore(self.store, self.index_dir, list(config.step_sizes), settings)
            except (FileNotFoundError, IndexDamaged) as again:
                raise CollectionError(f"{again}; the rebuild did not repair it") from None
        self.steps: list[int] = list(config.step_sizes)
        self.metric: str = config.metric
        years = self._years = self.store.years()
        self._rows_by_year = np.argsort(years, kind="stable")  # random images within a period
        self._sorted_years = years[self._rows_by_year]
        self.years: tuple[int, int] | None = (int(years.min()), int(years.max())) if len(years) else None
        self._random = random.Random()
        self._random_lock = threading.Lock()
        self.facets = Facets(self.store)  # metadata columns, read when a filter first asks for one
        self._map: CollectionMap | None = None
        self._map_signature: tuple[int, int, int] | None = None
        self._map_checked = -MAP_CHECK_SECONDS
        self._map_lock = threading.Lock()

    @property
    def count(self) -> int:
        return self.store.count

    @property
    def model(self) -> str:
        """The model the store's vectors come from: a query image must be embedded with it."""
        return self.store.model

    def info(self) -> dict:
        """What a client needs before asking: size, years, model, metric and the step sizes built."""
        return {"count": self.count, "model": self.store.model, "input_mode": self.store.input_mode,
                "n_dimensions": self.store.n_dimensions,
                "descriptor": self.core.descriptor, "metric": self.metric, "steps": self.steps,
                "years": None if self.years is None else {"first": self.years[0], "last": self.years[1]}}

    def __contains__(self, urn: object) -> bool:
        return urn in self.store

    # ---------------------------------------------------------------- items

    def item(self, urn: str, vectors: bool = False) -> dict:
        """{"urn", "metadata": {date, year, path, ...columns}} (+ "vector"); KeyError for an unknown urn."""
        return answers.item_answer(self.store, self.store.row_of(urn), vectors)

    def random_items(self, n: int, period: tuple[int, int] | None = None) -> list[dict]:
        """Up to `n` different items drawn at random, from the years `period` (first, last) if given."""
        low, high = 0, self.count
        if period is not None:
            low, high = np.searchsorted(self._sorted_years, [period[0], period[1] + 1]).tolist()
        with self._random_lock:
            positions = self._random.sample(range(low, high), min(n, high - low))
        return [answers.describe(self.store.items[self._rows_by_year[position]]) for position in positions]

    # ---------------------------------------------------------------- searching

    def check_vector(self, vector: Sequence[float] | np.ndarray) -> np.ndarray:
        """`vector` as a query of this collection; ValueError for a wrong shape or values not finite."""
        try:
            array = np.asarray(vector, dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError(f"vector must be a sequence of {self.store.n_dimensions} numbers") from None
        if array.ndim == 2 and array.shape[0] == 1:
            array = array[0]
        if array.shape != (self.store.n_dimensions,):
            raise ValueError(f"vector must have {self.store.n_dimensions} values (the {self.model!r} "
                             f"vectors of {self.vector_dir}), got shape {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError("vector holds NaN or infinite values")
        return np.ascontiguousarray(array)

    def _query(self, query: str | np.ndarray) -> Query:
        if isinstance(query, str):
            return self.core.query_for_row(self.store.row_of(query))  # KeyError naming the urn
        return self.core.query_for_vector(self.check_vector(query))

    def periods(self, query: str | Sequence[float] | np.ndarray, plan: dict[int | None, int],
                vectors: bool = False, include_self: bool = False,
                filters: dict[str, list[str]] | None = None) -> dict[str, list[dict]]:
        """{"all" or step: [{"period", "start", "end", "neighbours": [...]}]}: for each step size of
        `plan` (None: the whole collection, one period), plan[step] neighbours in every period of it.

        `query`: a urn of the collection (KeyError if unknown; it is never its own neighbour unless
        `include_self`), or a vector of the collection's model. A neighbour is {"urn", "distance",
        "date", "year", "path", ...metadata}, best first; `vectors` adds its "vector".
        """
        hits = self.core.search(self._query(query), {step_key(step): n for step, n in plan.items()},
                                include_self, self.facets.mask(filters) if filters else None)
        return answers.periods_answer(self.store, hits, vectors)

    def neighbours(self, query: str | Sequence[float] | np.ndarray, nns: int,
                   steps: Sequence[int | None] = (None,), vectors: bool = False, *, reprints: int = 0,
                   query_image: Image.Image | None = None,
                   filters: dict[str, list[str]] | None = None) -> dict:
        """The `nns` nearest neighbours of `query` in every period of each step size of `steps`.

        {"urn", "metadata", ("vector",) "nns", "step", ("reprints",) "steps": {"all": [...], "10": [...]}}:
        "step" is the one step asked for (None: the whole collection) or the list of them; "steps" holds
        one list of periods per step, in the order asked. For a vector, "urn" is None and "metadata" empty.

        `reprints`: check the query's `reprints` nearest images of the whole collection for being the
        same printed image (siamese/reprints.py; and the next ones while most of those checked are near
        misses, such as a template's other advertisements: reprints.verify), on the originals when
        `images_root` is known, else on the thumbnails; the verified ones come first in their periods
        (also where a period's own search did not reach them), checked neighbours say "reprint" and
        "inliers", every period "reprints" (its count), and "reprints" says what was checked. A vector
        query needs `query_image` (an upload); ReprintsUnavailable when the collection has no images to
        check on or a vector comes without its image. When the query's own image cannot be read, the
        search is answered all the same and "reprints" has a "note" saying so.
        """
        answer = self.item(query, vectors) if isinstance(query, str) else {"urn": None, "metadata": {}}
        answer.update(nns=nns, step=steps[0] if len(steps) == 1 else list(steps))
        if filters:
            answer["filters"] = filters
        if reprints <= 0:
            answer["steps"] = self.periods(query, dict.fromkeys(steps, nns), vectors, filters=filters)
            return answer
        answer["steps"], answer["reprints"] = self.periods_with_reprints(
            query, dict.fromkeys(steps, nns), reprints, vectors, query_image=query_image, filters=filters)
        return answer

    def periods_with_reprints(self, query: str | Sequence[float] | np.ndarray, plan: dict[int | None, int],
                              reprints: int, vectors: bool = False, include_self: bool = False,
                              query_image: Image.Image | None = None,
                              filters: dict[str, list[str]] | None = None
                              ) -> tuple[dict[str, list[dict]], dict]:
        """periods(), with the `reprints` nearest images checked as neighbours() says; and what was
        checked ({"checked", "found", "images", ...})."""
        query_features = self._query_features(query, query_image)
        keys = {step_key(step): n for step, n in plan.items()}
        depth = max(reprints, min(MAX_CANDIDATES, LOOK_DEEPER * reprints))
        hits = self.core.search(self._query(query), {**keys, WHOLE: max(keys.get(WHOLE, 0), depth)},
                                include_self, self.facets.mask(filters) if filters else None)
        candidates = hits[WHOLE][0]
        candidates = PeriodHits(candidates.period, candidates.rows[:depth], candidates.distances[:depth])
        if query_features is None:  # the search is answered all the same, saying why nothing was checked
            verification = Verification({}, self.require_reprint_images(), reprints, 0.0,
                                        f"the query's {self.reprint_images[:-1]} cannot be read: nothing "
                                        "was checked")
        else:
            verification = verify(query_features, candidates.rows.tolist(), self._candidate_features,
                                  self.require_reprint_images(), batch=reprints)
        promoted = {key: promote_reprints(hits[key], candidates, verification, self._years, n)
                    for key, n in keys.items()}
        return answers.periods_answer(self.store, promoted, vectors, verification), verification.summary()

    # ---------------------------------------------------------------- reprints

    @property
    def reprint_images(self) -> str | None:
        """What reprints are checked on: "originals" (images_root given), "thumbnails", or None."""
        if self.images_root is not None:
            return "originals"
        return "thumbnails" if self.thumbnails.directory is not None else None

    def require_reprint_images(self) -> str:
        """reprint_images, or ReprintsUnavailable saying how to give the collection images."""
        if self.reprint_images is None:
            raise ReprintsUnavailable("reprints cannot be checked: this collection has neither thumbnails "
                                      "nor its images (app.py --thumbnails DIR or --images-root DIR; "
                                      "AnnoyIndexer(thumbnail_dir=... or images_root=...))")
        return self.reprint_images

    def reprint_image(self, urn: str) -> Image.Image | None:
        """The image of `urn` that reprints are checked on (None when it cannot be read)."""
        if self.images_root is not None:
            path = resolve_image_path(str(self.store.items[self.store.row_of(urn)]["path"]), self.images_root)
        else:
            path = self.thumbnail_path(urn)
            if path is None:
                return None
        side = WORKING_SIDE
        try:
            return open_rgb(path, draft_size=(side, side))
        except ImageRejected:
            return None

    def _candidate_features(self, row: int) -> ImageFeatures | None:
        urn = self.store.urns[row]
        return self._reprint_features.get(urn, lambda: self.reprint_image(urn))

    def _query_features(self, query: str | Sequence[float] | np.ndarray,
                        query_image: Image.Image | None) -> ImageFeatures | None:
        self.require_reprint_images()
        if query_image is not None:
            return image_features(query_image)
        if not isinstance(query, str):
            raise ReprintsUnavailable("reprints are checked on images: query by urn or upload an image")
        return self._candidate_features(self.store.row_of(query))

    def embed(self, image: str | os.PathLike | Image.Image, embedder: Embedder | None = None) -> np.ndarray:
        """An image's vector by the collection's own model (`embedder`: that model, already loaded),
        the image shown to it as the collection's were (the store's input mode)."""
        return embed_image(image, self.model, embedder, self.store.input_mode)

    # ---------------------------------------------------------------- the map

    def collection_map(self) -> CollectionMap | None:
        """The collection's map (make_map.py), None when none was made. A map made again while the
        server runs is read on the next request after it (map.json looked at, one stat, at most every
        MAP_CHECK_SECONDS); a damaged one is reported in the log and the one read before is kept."""
        if time.monotonic() - self._map_checked < MAP_CHECK_SECONDS:
            return self._map
        with self._map_lock:
            if time.monotonic() - self._map_checked < MAP_CHECK_SECONDS:
                return self._map
            signature = map_signature(self.index_dir)
            if signature != self._map_signature:
                try:
                    self._map = open_map(self.index_dir, self._years)
                except MapDamaged as error:
                    print(f"the map in {self.index_dir} cannot be read ({error}); still serving the one read "
                          "before", file=sys.stderr, flush=True)
                self._map_signature = signature
            self._map_checked = time.monotonic()
            return self._map

    # ---------------------------------------------------------------- thumbnails

    def thumbnail_path(self, urn: str) -> Path | None:
        """The thumbnail file of `urn`, or None when none was made (not yet, or the image was rejected)."""
        return self.thumbnails.path(urn)

    def has_thumbnail(self, urn: str) -> bool:
        return self.thumbnails.exists(urn)


def manifest_signature(index_dir: Path) -> tuple[int, int, int] | None:
    """What changes when a build replaces the index directory's manifest (inode, mtime, size)."""
    try:
        stat = os.stat(index_dir / MANIFEST)
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


class LiveCollection:
    """The collection a server answers from, replaced whole when its indices are rebuilt.

    At most every `check_seconds` a request looks at the index directory's manifest (one stat); when a
    build has replaced it, a thread opens the collection again (the store as it is now, checked, the new
    indices loaded) while requests go on with the old one, and then replaces it in one assignment. A
    request takes the collection once (`current()`) and answers from it alone: from the old indices or
    the new, never a mix. Nothing is built here: while a build is under way (its manifest holds a
    pending generation), when the new manifest does not cover the store (more rows were extracted,
    their indices still to come) or when the collection cannot be opened, the old one stays (and why
    is logged). `check_seconds` None: never replaced (tests, a fixed snapshot).
    """

    def __init__(self, collection: Collection, check_seconds: float | None = 2.0) -> None:
        self._collection = collection
        self.check_seconds = check_seconds
        self._signature = manifest_signature(collection.index_dir)
        self._checked = time.monotonic()
        self._lock = threading.Lock()
        self._reopening: threading.Thread | None = None
        self.replaced = 0  # how many times it was (tests, logs)

    def current(self) -> Collection:
        if self.check_seconds is not None and time.monotonic() - self._checked >= self.check_seconds:
            self._check()
        return self._collection

    def _check(self) -> None:
        with self._lock:
            self._checked = time.monotonic()
            if self._reopening is not None:
                return
            signature = manifest_signature(self._collection.index_dir)
            if signature is None or signature == self._signature:
                return
            self._reopening = threading.Thread(target=self._reopen, args=(signature,), daemon=True,
                                               name="siamese-reopen")
            self._reopening.start()

    def wait(self, seconds: float | None = None) -> None:
        """Until a reopening under way (if any) has finished (tests)."""
        with self._lock:  # started under the lock: never joined before it runs
            thread = self._reopening
        if thread is not None:
            thread.join(seconds)

    def _reopen(self, signature: tuple[int, int, int]) -> None:
        old = self._collection
        try:
            manifest = read_manifest(old.index_dir)
            if manifest is None or "pending" in manifest:
                return  # a build under way (or interrupted): its generation is served once promoted
            new = Collection(old.vector_dir, old.index_dir, old.thumbnails.directory,
                             images_root=old.images_root, settings=old.core.settings, build=False)
        except (CollectionError, StoreError, IndexDamaged, FileNotFoundError, OSError, ValueError) as error:
            print(f"indices in {old.index_dir} changed but cannot be served yet ({error}); still serving "
                  "the ones opened before", file=sys.stderr, flush=True)
        else:
            self._collection = new
            self.replaced += 1
            print(f"indices in {old.index_dir} rebuilt: now serving {new.count} images, step sizes "
                  f"{', '.join(map(str, new.steps))}", file=sys.stderr, flush=True)
        finally:
            with self._lock:
                self._signature = signature
                self._reopening = None
