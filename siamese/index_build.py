"""Building the indices: which are stale, the projection they share, and writing each one.

One Annoy index covers the whole collection and one covers each period (1940-1949, 1950-1959, ... and
1940, 1941, ... for steps 10 and 1), so "the 10 most similar images of 1953" is a search in the 1953
index, not a filter over the whole collection's neighbours (which would come back empty for thin years).
Only what is missing or stale is built: an index's fingerprint covers its rows and every setting its
content depends on, so appending images rebuilds only the periods (and the whole collection) they join.
The files and the manifest are siamese/index_dir.py's.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex
from tqdm import tqdm

from siamese import codes
from siamese import index_dir as layout
from siamese.descriptors import (
    DEFAULT_DESCRIPTOR,
    DEFAULT_DESCRIPTOR_DIMENSIONS,
    FIT_SAMPLE,
    DescriptorTransform,
    check_descriptor,
    fit_descriptor_transform,
)
from siamese.periods import Period, periods_between, validate_step
from siamese.projection import PROJECTION_SAMPLE, Projection, check_metric, fit_projection
from siamese.qdrant_index import (
    QdrantLocation,
    QdrantUnavailable,
    connect,
    drop_collections,
    load_collection,
)
from siamese.vector_store import VectorStore

DEFAULT_N_TREES = 20
DEFAULT_INDEX_DIMENSIONS = 128
CHUNK = 16_384  # rows read from the memory map at a time while building
# The manifest records finished indices at most this often (and when a build stops): rewriting it after
# each of 1,500 yearly indices made the build quadratic (68 s for 3,000 small indices, two thirds of it
# rewriting the manifest); a killed build loses at most this much work.
MANIFEST_INTERVAL = 1.0
CONFIGURATION = ("metric", "model", "n_dimensions", "descriptor", "descriptor_dimensions", "index_dimensions",
                 "n_trees", "backend")  # one per directory
CODES_VERSION = 1  # what the codes' fingerprint depends on besides the rows: a new layout rewrites them
LEGACY = {"descriptor": "raw", "backend": "annoy"}  # what a directory built before a setting existed holds
BACKENDS = ("annoy", "qdrant")  # where the periods' candidates come from (siamese/qdrant_index.py)


def positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive whole number, got {value!r}")
    return int(value)


def step_sizes_of(step_sizes: int | Iterable[int]) -> tuple[int, ...]:
    """Distinct positive step sizes (a single one may be given bare); ValueError otherwise."""
    if isinstance(step_sizes, (str, bytes)) or not isinstance(step_sizes, Iterable):
        step_sizes = [step_sizes]  # a single step size
    steps = [validate_step(step if isinstance(step, bool) or not isinstance(step, Integral) else int(step))
             for step in step_sizes]
    if not steps or len(set(steps)) != len(steps):
        raise ValueError(f"step_sizes must list distinct step sizes, got {steps!r}")
    return tuple(steps)


@dataclass(frozen=True)
class IndexConfig:
    """What to build: the metric, the step sizes, and the two settings a directory keeps.

    n_trees : Annoy trees per index (more: better recall at a given search_k, bigger files);
        None: the index directory's setting, or 20 for a new one.
    descriptor : what is searched (siamese/descriptors.py): 'whitened' (the stored vectors' signed square
        root, PCA-whitened on the collection itself, unit length; far more robust to what scanning and
        reprinting do to an image, docs/quality.md) or 'raw' (the stored vectors as they are); None: the
        index directory's setting, or 'whitened' for a new one ('raw' for a directory built before).
    backend : 'annoy' (Annoy files and int8 codes in the index directory) or 'qdrant' (a Qdrant collection
        holding the descriptors: for collections beyond one machine; siamese/qdrant_index.py); None: the
        index directory's, or 'annoy' for a new one. Either way the directory keeps the descriptors, and
        distances are re-ranked exactly from them.
    qdrant : where the Qdrant backend's collection goes (a server's URL or a local-mode folder); None:
        where the directory's went.
    descriptor_dimensions : the whitened descriptors' dimensions (None: the directory's, or 256: 512 finds
        copies a little better, docs/scan-copies.md, but its 128-d projection keeps too little of it for
        recall at 426,777 images without doubling query time, docs/benchmarks.md).
    index_dimensions : dimensions of the PCA projection of the descriptors that Annoy indexes; None:
        the index directory's setting, or 128 for a new one (64 gave recall@10 of only 0.965 on the
        real Inception vectors of the demo, 128 gives 0.996; whitened descriptors spread their variance
        more evenly, and the search keeps more candidates for them: SearchSettings.candidate_multiplier);
        the descriptors' dimensions or more indexes them as they are.
    """

    metric: str = "euclidean"
    step_sizes: tuple[int, ...] = (10, 1)
    n_trees: int | None = None
    index_dimensions: int | None = None
    descriptor: str | None = None
    descriptor_dimensions: int | None = None
    backend: str | None = None
    qdrant: QdrantLocation | None = None

    def __post_init__(self) -> None:
        check_metric(self.metric)
        if self.descriptor is not None:
            check_descriptor(self.descriptor)
        if self.backend is not None and self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {self.backend!r}")
        if self.qdrant is not None and self.backend == "annoy":
            raise ValueError("a Qdrant location was given for the 'annoy' backend; use backend='qdrant'")
        if self.backend == "qdrant":
            for name in ("n_trees", "index_dimensions"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} is a setting of the Annoy backend; Qdrant indexes the "
                                     "descriptors themselves")
        object.__setattr__(self, "step_sizes", step_sizes_of(self.step_sizes))
        for name in ("n_trees", "index_dimensions", "descriptor_dimensions"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, positive_int(getattr(self, name), name))

    def settings(self, manifest: dict | None, store: VectorStore) -> dict:
        """The configuration a build writes: the explicit settings, else the directory's, else defaults."""
        def choose(name: str, default: int | str, carries_over: bool = True) -> int | str:
            explicit = getattr(self, name)
            if explicit is not None:
                return explicit
            return manifest.get(name, LEGACY.get(name, default)) if manifest and carries_over else default
        descriptor = choose("descriptor", DEFAULT_DESCRIPTOR)
        # a directory's dimensions carry over only to the same descriptor (--force to another one)
        same = bool(manifest) and manifest.get("descriptor", LEGACY["descriptor"]) == descriptor
        if descriptor == "raw":
            dimensions = store.n_dimensions
        else:
            dimensions = min(choose("descriptor_dimensions", DEFAULT_DESCRIPTOR_DIMENSIONS, same),
                             store.n_dimensions)
        backend = choose("backend", BACKENDS[0])
        # Qdrant indexes the descriptors as they are: no projection, no int8 codes
        k = dimensions if backend == "qdrant" else choose("index_dimensions", DEFAULT_INDEX_DIMENSIONS, same)
        return {"metric": self.metric, "model": store.model, "n_dimensions": store.n_dimensions,
                "descriptor": descriptor, "descriptor_dimensions": dimensions,
                "index_dimensions": min(k, dimensions), "n_trees": choose("n_trees", DEFAULT_N_TREES),
                "backend": backend}

    def check_compatible(self, index_dir: Path, manifest: dict, store: VectorStore) -> None:
        """ValueError when the directory holds indices of another configuration (never replace silently)."""
        for name, value in self.settings(manifest, store).items():
            if manifest.get(name, LEGACY.get(name)) != value and not (
                    name == "descriptor_dimensions" and name not in manifest):
                held = manifest.get(name, LEGACY.get(name))
                raise ValueError(
                    f"{index_dir} holds indices built with {name}={held!r}, not "
                    f"{name}={value!r}; use another index directory, the same {name}, or build(force=True) "
                    "(--force) to replace them")

    def is_current(self, index_dir: Path, manifest: dict | None, store: VectorStore) -> bool:
        """The cheap check: same configuration, every step size built at the store's current state, and
        the int8 codes there (a directory built before them gets them, and nothing else, rebuilt)."""
        if manifest is None:
            return False
        self.check_compatible(index_dir, manifest, store)
        recorded = _location(manifest.get("qdrant"))
        if self.qdrant is not None and not self.qdrant.same_place(recorded, index_dir):
            return False  # asked to load another Qdrant
        return layout.is_complete(manifest, store, list(self.step_sizes)) and not layout.needs_codes(manifest)


def _location(record: dict | None) -> QdrantLocation | None:
    return QdrantLocation.from_record(record) if record else None


@dataclass
class BuildReport:
    """How many indices were built now, were already current, or are not needed (empty periods);
    the wall time, and its split into "projection" (fitting and projecting), "all" and each step."""

    built: int = 0
    up_to_date: int = 0
    empty: int = 0
    seconds: float = 0.0
    seconds_by_index: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"built": self.built, "up_to_date": self.up_to_date, "empty": self.empty,
                "seconds_by_index": self.seconds_by_index, "seconds": self.seconds}


def build_indices(store: VectorStore, index_dir: str | Path, config: IndexConfig, *, force: bool = False,
                  n_jobs: int = -1, verbose: bool = True,
                  on_index_written: Callable[[str], None] | None = None) -> BuildReport:
    """Build the indices of `store` that are missing or stale; `force` rebuilds everything.

    Safe to interrupt: re-running keeps what was finished. `on_index_written(key)` is called after each
    index is written and recorded (progress reporting; an exception there interrupts the build).
    The store is verified against its checksums first: damaged vectors are never indexed.
    """
    started = time.perf_counter()
    store.verify()
    if store.count == 0:
        rejects = store.directory / "rejects.csv"
        raise ValueError(f"{store.directory} holds no images yet: nothing to index"
                         + (f" (its {rejects.name} says why extraction stored none)" if rejects.exists()
                            else "; extract some first with: python extract_vectors.py METADATA_CSV "
                                 f"{store.directory}"))
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    with layout.build_lock(index_dir):
        old = layout.read_manifest(index_dir)
        if old is not None and not force:
            config.check_compatible(index_dir, old, store)
        settings = config.settings(old, store)
        previous = [record for record in ((old or {}).get("qdrant"), ((old or {}).get("pending") or {}).get(
            "qdrant")) if record]  # where collections that this build may replace are
        manifest = old if old is not None and not force else layout.new_manifest(settings)
        report = _build(index_dir, manifest, store, config, settings, n_jobs, verbose, on_index_written)
        layout.collect_garbage(index_dir, manifest)
        locations = {QdrantLocation.from_record(record) for record in [*previous, manifest.get("qdrant")]
                     if record}
        for location in locations:  # the collections a refit, another location or --force replaced
            try:
                drop_collections(location, index_dir, {(manifest.get("qdrant") or {}).get("collection")})
            except QdrantUnavailable as error:
                print(f"warning: collections replaced by this build are left at {location.describe()}: "
                      f"{error}", file=sys.stderr)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def index_groups(years: np.ndarray, step_sizes: Iterable[int]) -> dict[str, tuple[Period | None, np.ndarray]]:
    """Every index to have: key -> (period, ascending store rows); empty periods included."""
    groups: dict[str, tuple[Period | None, np.ndarray]] = {layout.WHOLE: (None, np.arange(len(years)))}
    if len(years) == 0:
        return groups
    for step in step_sizes:
        starts = years - years % step  # the same calendar alignment as periods.period_of
        order = np.argsort(starts, kind="stable")  # stable: rows stay ascending within a period
        sorted_starts = starts[order]
        for period in periods_between(int(years.min()), int(years.max()), step):
            lo, hi = np.searchsorted(sorted_starts, [period.start, period.start + step])
            groups[layout.index_key(step, period.start)] = (period, order[lo:hi])
    return groups


def _build(index_dir: Path, manifest: dict, store: VectorStore, config: IndexConfig, settings: dict,
           n_jobs: int, verbose: bool, on_index_written: Callable[[str], None] | None) -> BuildReport:
    """Write the stale indices as a pending generation, then promote it whole (index_dir.py says why)."""
    clock = time.perf_counter()
    pending = manifest.setdefault("pending", {"projection": None, "indices": {}})
    transform, transform_record, new_transform = _transform(index_dir, manifest, store, settings)
    descriptors, descriptors_record = _descriptors(index_dir, manifest, store, transform, transform_record,
                                                   verbose)
    project, recorded, refitted = _projection(index_dir, manifest, descriptors, config.metric, settings,
                                              new_transform)
    # what an index's content depends on besides its rows; in its file names, so that a rebuilt index
    # never overwrites a file that a reader may have memory-mapped
    salt = f"{recorded['sha1']}:{config.metric}:{settings['n_trees']}:".encode()
    if not transform.is_identity:  # (raw: the salt of the directories built before descriptors existed)
        salt = f"{transform_record['sha1']}:".encode() + salt
    years = store.years()
    groups = index_groups(years, config.step_sizes)
    current = {} if refitted else manifest["indices"]
    report = BuildReport()
    ready, stale = {}, {}
    for key, (_, rows) in groups.items():
        fingerprint = hashlib.sha1(salt + rows.astype("<i8").tobytes()).hexdigest()
        for entry in (pending["indices"].get(key), current.get(key)):  # resumed first, then reused
            if entry is not None and entry.get("fingerprint") == fingerprint \
                    and layout.damage(index_dir, entry) is None:
                ready[key] = entry
                break
        else:
            stale[key] = fingerprint
        if not len(rows):
            report.empty += 1
        elif key in stale:
            report.built += 1
        else:
            report.up_to_date += 1
    needed = [groups[key][1] for key in stale]
    projected = _project_rows(descriptors, project, np.unique(np.concatenate(needed)), verbose) \
        if needed and project.components is not None else None
    codes_record = _codes(index_dir, manifest, descriptors, descriptors_record, project, recorded,
                          layout.store_state(store), years,
                          projected if layout.WHOLE in stale else None,  # then every row was projected
                          not transform.is_identity, verbose)
    qdrant = settings["backend"] == "qdrant"
    qdrant_record = _load_qdrant(index_dir, manifest, config, descriptors, transform_record, years, verbose) \
        if qdrant else None
    seconds = {"projection": time.perf_counter() - clock}  # where the time went, for the report
    annoy_metric = project.annoy_metric(settings["descriptor_dimensions"], settings["index_dimensions"])
    written = time.perf_counter()
    with tqdm(total=len(stale), desc="qdrant periods" if qdrant else "annoy indices", unit="index",
              file=sys.stderr, disable=not verbose) as progress:
        try:
            for key, fingerprint in stale.items():
                clock = time.perf_counter()
                progress.set_postfix_str(key, refresh=False)
                rows = groups[key][1]
                entry = {"fingerprint": fingerprint, "count": len(rows), "n_trees": settings["n_trees"]}
                if qdrant:
                    entry = {"fingerprint": fingerprint, "count": len(rows), "qdrant": True}
                elif len(rows):
                    names = layout.file_names(key, fingerprint)
                    write_index(index_dir, names, rows, descriptors, project, projected, annoy_metric,
                                settings["n_trees"], n_jobs)
                    entry.update(layout.describe_files(index_dir, names))
                pending["indices"][key] = ready[key] = entry
                if time.perf_counter() - written >= MANIFEST_INTERVAL:  # an interrupted build resumes
                    layout.write_manifest(index_dir, manifest)
                    written = time.perf_counter()
                group = key.split("/")[0]
                seconds[group] = seconds.get(group, 0.0) + time.perf_counter() - clock
                progress.update()
                if on_index_written is not None:
                    on_index_written(key)
        finally:  # Ctrl-C or an error: keep what was finished (a kill -9 loses at most MANIFEST_INTERVAL)
            layout.write_manifest(index_dir, manifest)
    # promotion: readers switch from the previous complete generation to this one in one rename
    manifest["indices"] = {key: _without_scan(entry) for key, entry in {**current, **ready}.items()}
    manifest.update(transform=transform_record, descriptors=descriptors_record, projection=recorded,
                    codes=codes_record)
    if qdrant:
        manifest["qdrant"] = qdrant_record
    else:
        manifest.pop("qdrant", None)
    if refitted:
        manifest["complete"] = {}  # indices of other step sizes were built with the old projection
    del manifest["pending"]
    layout.mark_complete(manifest, store, list(config.step_sizes),
                         [int(years.min()), int(years.max())] if len(years) else None)
    layout.write_manifest(index_dir, manifest)
    report.seconds_by_index = {name: round(value, 3) for name, value in seconds.items()}
    return report


def _load_qdrant(index_dir: Path, manifest: dict, config: IndexConfig, descriptors: np.ndarray,
                 transform_record: dict, years: np.ndarray, verbose: bool) -> dict:
    """Load the rows the Qdrant collection lacks (siamese/qdrant_index.py); its record goes into the
    pending generation as it loads (an interrupted load resumes) and is promoted with the rest."""
    pending = manifest["pending"]
    record = pending.get("qdrant") or manifest.get("qdrant")
    location = config.qdrant or _location(record)
    if location is None:
        raise ValueError("the Qdrant backend needs a server's URL (--qdrant-url URL) or a local folder "
                         "(--qdrant-path DIR)")
    basis = hashlib.sha1(f"{transform_record['sha1']}:{config.metric}:{descriptors.shape[1]}".encode()
                         ).hexdigest()
    client = connect(location)

    def save(record: dict) -> None:
        pending["qdrant"] = record
        layout.write_manifest(index_dir, manifest)

    with tqdm(total=len(years), desc=f"qdrant ({location.describe()})", unit="row", file=sys.stderr,
              disable=not verbose) as progress:
        def loaded(rows: int) -> None:
            progress.n = rows
            progress.refresh()

        return load_collection(client, location, index_dir, record, descriptors, years, config.step_sizes,
                               config.metric, basis, save, loaded)


def _transform(index_dir: Path, manifest: dict, store: VectorStore,
               settings: dict) -> tuple[DescriptorTransform, dict, bool]:
    """(descriptor transform, its manifest record, whether it replaces the current one).

    Kept, like the projection, unless it was fitted on less than half the rows it would be fitted on
    now (FIT_SAMPLE at most) or is not the configured one; a refit changes every descriptor, so the
    projection is fitted again and every index rebuilt. Resumed from the pending generation.
    """
    current, pending = manifest.get("transform"), manifest["pending"]
    if settings["descriptor"] == "raw":  # (a directory built before descriptors existed has no record)
        record = {"descriptor": "raw", "sha1": "raw"}
        return layout.read_transform(index_dir, None), record, (current or record) != record

    def matches(record: dict | None) -> bool:
        return bool(record) and record.get("descriptor") == settings["descriptor"] \
            and record.get("dimensions") == settings["descriptor_dimensions"]

    if matches(pending.get("transform")):
        return layout.read_transform(index_dir, pending["transform"]), pending["transform"], True
    enough = min(store.count, FIT_SAMPLE)
    if matches(current) and current.get("file") and current["fitted_on"] * 2 >= enough:
        try:
            return layout.read_transform(index_dir, current), current, False
        except layout.IndexDamaged:
            pass  # fitted again below, and every index rebuilt with it
    transform, record = fit_descriptor_transform(store.vectors, settings["descriptor"],
                                                 settings["descriptor_dimensions"])
    record = {**record, "dimensions": settings["descriptor_dimensions"],
              **layout.save_transform(index_dir, transform)}
    pending["transform"] = record
    layout.write_manifest(index_dir, manifest)  # the file is referenced before anything uses it
    return transform, record, True


def _descriptors(index_dir: Path, manifest: dict, store: VectorStore, transform: DescriptorTransform,
                 transform_record: dict, verbose: bool) -> tuple[np.ndarray, dict | None]:
    """Every stored row's descriptor, and their manifest record (None: the stored vectors themselves).

    Written whole for each state of the store (a few seconds for 426,777 rows): rows appended since
    get theirs, and the file's fingerprint ties it to the transform and the store's state.
    """
    if transform.is_identity:
        return store.vectors, None
    dimensions = transform.dimensions(store.n_dimensions)
    state = layout.store_state(store)
    fingerprint = hashlib.sha1(f"{transform_record['sha1']}:{sorted(state.items())}".encode()).hexdigest()
    pending = manifest["pending"]
    for record in (pending.get("descriptors"), manifest.get("descriptors")):
        if record and record.get("fingerprint") == fingerprint:
            try:
                return layout.read_descriptors(index_dir, record, store.count, dimensions), record
            except layout.IndexDamaged:
                break  # written again below
    name = layout.descriptors_name(fingerprint)
    path = index_dir / name
    with layout.temporary(path) as temporary:
        output = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32,
                                           shape=(store.count, dimensions))
        chunks = range(0, store.count, CHUNK)
        for start in tqdm(chunks, desc="descriptors", unit="chunk", file=sys.stderr, leave=False,
                          disable=not verbose or len(chunks) < 4):
            output[start:start + CHUNK] = transform.apply(store.vectors[start:start + CHUNK])
        output.flush()
        del output
        layout.fsync(temporary)
        os.replace(temporary, path)
    record = {"file": name, "checksum": layout.file_checksum(path), "fingerprint": fingerprint,
              "count": store.count, "dimensions": dimensions}
    pending["descriptors"] = record
    layout.write_manifest(index_dir, manifest)
    return layout.read_descriptors(index_dir, record, store.count, dimensions), record


def _projection(index_dir: Path, manifest: dict, vectors: np.ndarray, metric: str,
                settings: dict, new_transform: bool) -> tuple[Projection, dict, bool]:
    """(projection, its manifest record, whether it replaces the current one).

    The current projection is kept unless there is none, it was fitted on too few rows, or it has no
    checksum (an older version's): a projection fitted on the first 500 images of what becomes a
    400,000-image collection would choose poor candidates, so it is refitted (and every index rebuilt)
    while the collection holds more than twice the rows it was fitted on, up to PROJECTION_SAMPLE rows.
    A refit goes into the pending generation; an interrupted one is resumed, not fitted again. It is
    fitted on the descriptors (`vectors`), so a new transform means a new projection.
    """
    k = settings["index_dimensions"]
    current, pending = manifest["projection"], manifest["pending"]
    count, n_dimensions = vectors.shape
    if k >= n_dimensions:  # the descriptors as they are
        record = {"sha1": "none", "index_dimensions": k}
        return Projection(metric), record, record != current or new_transform
    if pending.get("projection"):
        return layout.read_projection(index_dir, metric, pending["projection"]), pending["projection"], True
    enough = min(count, PROJECTION_SAMPLE)
    if not new_transform and current and current.get("file") and current.get("checksum") \
            and current["fitted_on"] * 2 >= enough:
        try:
            return layout.read_projection(index_dir, metric, current), current, False
        except layout.IndexDamaged:
            pass  # fitted again below, and every index rebuilt with it
    projection, kept, fitted_on = fit_projection(vectors, metric, k)
    sha1 = hashlib.sha1(projection.mean.tobytes() + projection.components.tobytes()
                        + metric.encode()).hexdigest()
    record = {**layout.save_projection(index_dir, projection, sha1), "sha1": sha1, "index_dimensions": k,
              "fitted_on": fitted_on, "variance_kept": round(kept, 4)}
    pending["projection"] = record
    layout.write_manifest(index_dir, manifest)  # the file is referenced before any index uses it
    return projection, record, True


def _without_scan(entry: dict) -> dict:
    """An index entry without the float32 scan matrix of older builds (the codes replaced it; the file
    is deleted with the rest of the garbage)."""
    if "scan" not in entry:
        return entry
    entry = {name: value for name, value in entry.items() if name != "scan"}
    for name in ("sizes", "checksums"):
        if isinstance(entry.get(name), dict):
            entry[name] = {kind: value for kind, value in entry[name].items() if kind != "scan"}
    return entry


def _codes(index_dir: Path, manifest: dict, descriptors: np.ndarray, descriptors_record: dict | None,
           project: Projection, projection_record: dict, store_state: dict, years: np.ndarray,
           projected: np.ndarray | None, with_descriptors: bool, verbose: bool) -> dict | None:
    """The int8 codes of every row (siamese/codes.py) and their manifest record; None without a PCA
    projection (nothing to code: the descriptors are indexed as they are).

    Written whole for each state of the store and projection, like the descriptors (about 10 s for
    426,777 rows, most of it projecting them when no index needed that anyway); `projected` is reused
    when it holds every row. Descriptor codes only for whitened descriptors: unit length, so that their
    dot product ranks like every metric but manhattan."""
    if project.components is None:
        return None
    state = descriptors_record["fingerprint"] if descriptors_record else sorted(store_state.items())
    fingerprint = hashlib.sha1(f"codes:{CODES_VERSION}:{projection_record['sha1']}:{state}:{len(years)}:"
                               f"{with_descriptors}".encode()).hexdigest()
    pending = manifest["pending"]
    for record in (pending.get("codes"), manifest.get("codes")):
        if record and record.get("fingerprint") == fingerprint and record.get("files") \
                and layout.codes_damage(index_dir, record) is None:
            return record
    if projected is None:
        projected = _project_rows(descriptors, project, np.arange(len(years)), verbose)
    k = project.components.shape[1]
    order = np.argsort(years, kind="stable")
    sorted_items = projected[order]
    extra = project.scan_extra(sorted_items)
    extra[~np.isfinite(sorted_items).all(axis=1)] = np.inf  # an unusable row is nobody's candidate
    scales = codes.fit_scales(sorted_items[:, :k])
    parts = {"projection": codes.quantise(sorted_items[:, :k], scales), "extra": extra.astype(np.float32)}
    del sorted_items
    if with_descriptors:
        descriptor_scales = codes.fit_scales(descriptors, chunk=CHUNK)
        quantised = np.empty(descriptors.shape, np.int8)
        for start in range(0, len(descriptors), CHUNK):
            quantised[start:start + CHUNK] = codes.quantise(descriptors[start:start + CHUNK],
                                                            descriptor_scales)
        parts["descriptors"] = quantised
        scales = np.concatenate([scales, descriptor_scales])
    parts["scales"] = scales.astype(np.float32)
    names = layout.codes_names(fingerprint, with_descriptors)
    for part, array in parts.items():
        layout.save_npy(index_dir / names[part], array)
    record = {"fingerprint": fingerprint, "count": len(years), **layout.describe_files(index_dir, names),
              "files": names}
    for part in names:
        del record[part]
    pending["codes"] = record
    layout.write_manifest(index_dir, manifest)
    return record


def _project_rows(vectors: np.ndarray, project: Projection, rows: np.ndarray, verbose: bool) -> np.ndarray:
    """Projected descriptors of `rows` (the others left zero), read from the memory map chunk by chunk."""
    projected = np.zeros((len(vectors), project.dimensions(vectors.shape[1])), dtype=np.float32)
    chunks = range(0, len(rows), CHUNK)
    for start in tqdm(chunks, desc="projecting", unit="chunk", file=sys.stderr, leave=False,
                      disable=not verbose or len(chunks) < 4):
        chunk = rows[start:start + CHUNK]
        projected[chunk] = project.items(vectors[chunk])
    return projected


def write_index(index_dir: Path, names: dict[str, str], rows: np.ndarray, descriptors: np.ndarray,
                project: Projection, projected: np.ndarray | None, annoy_metric: str, n_trees: int,
                n_jobs: int) -> None:
    """Build and save one index: the Annoy file and its rows."""
    index = AnnoyIndex(project.dimensions(descriptors.shape[1]), annoy_metric)
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start:start + CHUNK]
        vectors = projected[chunk] if projected is not None else project.items(descriptors[chunk])
        for offset, vector in enumerate(vectors.tolist()):  # lists: Annoy reads them fastest
            index.add_item(start + offset, vector)
    index.build(n_trees, n_jobs=n_jobs)
    with layout.temporary(index_dir / names["annoy"]) as temporary:
        index.save(str(temporary))
        index.unload()
        layout.fsync(temporary)
        os.replace(temporary, index_dir / names["annoy"])
    layout.save_npy(index_dir / names["rows"], rows.astype(np.int64))
