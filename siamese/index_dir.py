"""The index directory's on-disk contract: the manifest, file names, atomic saves, the lock, clean-up.

    INDEX_DIR/index.json                       the manifest (format, version, settings, every index)
    INDEX_DIR/transform.<sha1>.npy             the descriptor transform (siamese/descriptors.py): row 0 the
                                               mean, rows 1.. the whitening components
    INDEX_DIR/descriptors.<fingerprint>.npy    every stored row's descriptor (what is searched and ranked)
    INDEX_DIR/projection.<sha1>.npy            the PCA projection: row 0 the mean, rows 1.. the components
    INDEX_DIR/codes.<fingerprint>.<part>.npy   int8 codes of every row (siamese/codes.py): projection
                                               (sorted by year), extra, descriptors, scales
    INDEX_DIR/all.<fingerprint>.ann|.rows.npy           the whole collection's index
    INDEX_DIR/step<S>_<START>.<fingerprint>.ann|.rows.npy   one period's index
    (with the Qdrant backend, siamese/qdrant_index.py, no index files: the manifest's "qdrant" record
    names the collection holding every row, and each index's entry says `"qdrant": true`)
    (directories built before the codes existed also hold a float32 <...>.scan.npy per index: no longer
    read, and deleted by the next build)

This module is the only code that knows these names and the manifest's keys. Every file is written
under a temporary name and renamed into place, and the manifest is rewritten after each index, so an
interrupted build resumes where it stopped and a reader never sees half an index. File names carry a
fingerprint of the index's rows and settings: a rebuilt index never overwrites a file that a running
reader has memory-mapped.

Readers see one consistent generation: a build records what it writes under the manifest's
"pending" key and promotes all of it at once when it is done (so a server started during a build,
even one that refits the projection, finds the previous complete set). Each file's size and xxh3-64
checksum are recorded when it is written and checked before it is memory-mapped: a damaged Annoy
file is refused (and rebuilt by the next build), never handed to Annoy, which would crash on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xxhash

from siamese.codes import DescriptorCodes, ProjectionCodes
from siamese.descriptors import IDENTITY, DescriptorTransform
from siamese.projection import Projection
from siamese.vector_store import VectorStore, write_atomically

MANIFEST = "index.json"
FORMAT = "siamese-annoy-indices"
VERSION = 1
WHOLE = "all"  # the key of the whole-collection index, in the manifest and in answers
FILES = ("annoy", "rows", "scan")  # the files of one index, as the manifest names them (scan: older builds)
TEMPORARY_PREFIX = ".annoy-indexer-"
LOCK = ".lock"
OUR_FILE = re.compile(r"^((all|step\d+_-?\d+)\.[0-9a-f]{12}\.(ann|rows\.npy|scan\.npy)"
                      r"|(projection|transform|descriptors)\.[0-9a-f]{12}\.npy"
                      r"|codes\.[0-9a-f]{12}\.(projection|extra|descriptors|scales)\.npy)$")  # what garbage
# collection may delete
SHARED = ("transform", "descriptors", "projection", "codes")  # the manifest's records of shared files
CODE_FILES = ("projection", "extra", "descriptors", "scales")  # the parts of the codes (siamese/codes.py)


REBUILD = "rebuild them with: python annoy_indexer.py build VECTOR_DIR INDEX_DIR --force --steps 10 1"


class IndexDamaged(ValueError):
    """An index file is missing, truncated or changed since it was written; the message names it."""


def read_manifest(index_dir: str | os.PathLike) -> dict | None:
    """The index directory's manifest, or None when nothing was built there yet."""
    path = Path(index_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: unreadable index manifest ({error}); {REBUILD}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a manifest of annoy_indexer.py indices (damaged?); {REBUILD}")
    if manifest.get("version") != VERSION:
        raise ValueError(f"{path}: manifest version {manifest.get('version')!r}, this code reads "
                         f"version {VERSION}; rebuild with build(force=True) / --force")
    return manifest


def new_manifest(settings: dict) -> dict:
    """An empty manifest for indices of `settings` (metric, model, n_dimensions, index_dimensions,
    n_trees)."""
    return {"format": FORMAT, "version": VERSION, **settings, "transform": None, "descriptors": None,
            "projection": None, "complete": {}, "indices": {}}


def write_manifest(index_dir: Path, manifest: dict) -> None:
    write_atomically(index_dir / MANIFEST, json.dumps(manifest, indent=1).encode())


def store_state(store: VectorStore) -> dict:
    """What identifies the store's content cheaply; a store only grows, so this changes when it does."""
    return {"model": store.model, "n_dimensions": store.n_dimensions, "count": store.count,
            "items_bytes": store.manifest.get("items_bytes")}


def needs_codes(manifest: dict) -> bool:
    """Whether the directory's searches want int8 codes that it does not have (built before they existed):
    every directory with a PCA projection has them."""
    return bool((manifest.get("projection") or {}).get("file")) and not manifest.get("codes")


def built_step_sizes(manifest: dict) -> list[int]:
    """The step sizes completely built, largest first (decades before years).

    The manifest's `complete` entry names the whole-collection index "all" and each step by its size."""
    steps = {int(key) for key in manifest.get("complete", {}) if key.isdigit() and int(key) > 0}
    return sorted(steps, reverse=True)


def is_complete(manifest: dict, store: VectorStore, step_sizes: list[int]) -> bool:
    """Whether the whole collection and every step size in `step_sizes` were built at the store's state."""
    state = store_state(store)
    complete = manifest.get("complete", {})
    return all(complete.get(key) == state for key in [WHOLE, *map(str, step_sizes)])


def mark_complete(manifest: dict, store: VectorStore, step_sizes: list[int], years: list[int] | None) -> None:
    """Record that the whole collection and `step_sizes` are built for the store as it is now; step
    sizes built for an older state of the store are no longer complete."""
    state = store_state(store)
    manifest.update(store_count=store.count, store=state, years=years)
    complete = {key: value for key, value in manifest["complete"].items() if value == state}
    manifest["complete"] = {**complete, **{key: state for key in [WHOLE, *map(str, step_sizes)]}}


def index_key(step: int | None, start: int | None = None) -> str:
    """The manifest's key of an index: "all", or "<step>/<first year>" for a period."""
    return WHOLE if step is None else f"{step}/{start}"


def file_names(key: str, fingerprint: str) -> dict[str, str]:
    """The file names of one index, by the manifest's names for them (FILES)."""
    stem = f"{key if key == WHOLE else 'step' + key.replace('/', '_')}.{fingerprint[:12]}"
    return {"annoy": f"{stem}.ann", "rows": f"{stem}.rows.npy"}


def file_checksum(path: Path) -> str:
    """xxh3-64 of a file's bytes, read in chunks (about 20 GB/s from the page cache)."""
    digest = xxhash.xxh3_64()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def describe_files(index_dir: Path, names: dict[str, str]) -> dict:
    """What the manifest records of an index's files: their names, sizes and checksums."""
    return {**names, "sizes": {kind: (index_dir / name).stat().st_size for kind, name in names.items()},
            "checksums": {kind: file_checksum(index_dir / name) for kind, name in names.items()}}


def codes_damage(index_dir: Path, record: dict) -> str | None:
    """Why the recorded codes cannot be used (a part missing, of another size, changed), or None."""
    for part, name in (record.get("files") or {}).items():
        path = index_dir / name
        try:
            size = path.stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            return f"{name} is missing"
        if size != (record.get("sizes") or {}).get(part) or \
                file_checksum(path) != (record.get("checksums") or {}).get(part):
            return f"{name} does not match its checksum"
    return None


def damage(index_dir: Path, entry: dict, full: bool = True) -> str | None:
    """Why an index entry's files cannot be used (missing, wrong size, changed, no checksum), or None.

    `full` reads the files to compare their checksums; without it only names and sizes are checked."""
    try:
        check_entry(index_dir, "?", entry)
    except IndexDamaged:
        return "its entry in the manifest is damaged"
    sizes, checksums = entry.get("sizes") or {}, entry.get("checksums") or {}
    for kind in FILES:
        if kind not in entry:
            continue
        path = index_dir / entry[kind]
        if kind not in sizes or kind not in checksums:
            return f"{path.name} has no recorded checksum (built by an older version)"
        try:
            size = path.stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            return f"{path.name} is missing"
        if size != sizes[kind]:
            return f"{path.name} is {size:,} bytes, {sizes[kind]:,} when it was written"
        if full and file_checksum(path) != checksums[kind]:
            return f"{path.name} does not match its checksum: changed or damaged since it was written"
    return None


def check_entry(index_dir: Path, key: str, entry: object) -> dict:
    """The manifest's entry of one index, checked for the fields a reader needs (IndexDamaged)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("count"), int) or entry["count"] < 0 or (
            entry["count"] and entry.get("qdrant") is not True
            and not all(isinstance(entry.get(kind), str) for kind in ("annoy", "rows"))):
        raise IndexDamaged(f"{index_dir / MANIFEST}: the entry of index {key} is damaged; rebuild with: "
                           "python annoy_indexer.py build VECTOR_DIR INDEX_DIR --force")
    return entry


@contextlib.contextmanager
def temporary(path: Path) -> Iterator[Path]:
    """A temporary name next to `path`; the caller renames it into place, or it is removed."""
    name = path.with_name(f"{TEMPORARY_PREFIX}{os.getpid()}-{path.name}.tmp")
    try:
        yield name
    finally:
        with contextlib.suppress(FileNotFoundError):
            name.unlink()


def fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def save_npy(path: Path, array: np.ndarray) -> None:
    with temporary(path) as name:
        with open(name, "wb") as handle:
            np.save(handle, array)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(name, path)


def save_projection(index_dir: Path, projection: Projection, sha1: str) -> dict:
    """Write the projection's file; returns what the manifest records of it (name, checksum)."""
    name = f"projection.{sha1[:12]}.npy"
    save_npy(index_dir / name, np.vstack([projection.mean[None, :], projection.components.T]))
    return {"file": name, "checksum": file_checksum(index_dir / name)}


def read_projection(index_dir: Path, metric: str, recorded: dict | None) -> Projection:
    """A recorded projection (the identity when the vectors are indexed as they are); IndexDamaged
    when its file is missing or changed."""
    name = (recorded or {}).get("file")
    if not name:
        return Projection(metric)
    path = index_dir / name
    try:
        if recorded.get("checksum") != file_checksum(path):
            raise IndexDamaged(f"{path} does not match its checksum; rebuild with: python annoy_indexer.py "
                               "build VECTOR_DIR INDEX_DIR --force")
        saved = np.load(path)  # row 0: the mean; rows 1..k: the components
    except (OSError, ValueError) as error:
        if isinstance(error, IndexDamaged):
            raise
        raise IndexDamaged(f"{path} cannot be read ({error}); rebuild with: python annoy_indexer.py build "
                           "VECTOR_DIR INDEX_DIR --force") from None
    return Projection(metric, saved[0], np.ascontiguousarray(saved[1:].T))


def _load_checked(path: Path, recorded: dict, what: str, mmap: bool = False) -> np.ndarray:
    """A saved array whose file matches the checksum recorded when it was written (IndexDamaged if not)."""
    try:
        if recorded.get("checksum") != file_checksum(path):
            raise IndexDamaged(f"{path} does not match its checksum; rebuild with: python annoy_indexer.py "
                               "build VECTOR_DIR INDEX_DIR --force")
        return np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as error:
        if isinstance(error, IndexDamaged):
            raise
        raise IndexDamaged(f"{path} cannot be read as {what} ({error}); rebuild with: python annoy_indexer.py"
                           " build VECTOR_DIR INDEX_DIR --force") from None


def save_transform(index_dir: Path, transform: DescriptorTransform) -> dict:
    """Write the descriptor transform's file; returns what the manifest records of it."""
    name = f"transform.{transform.sha1[:12]}.npy"
    save_npy(index_dir / name, transform.to_array())
    return {"file": name, "checksum": file_checksum(index_dir / name), "sha1": transform.sha1}


def read_transform(index_dir: Path, recorded: dict | None) -> DescriptorTransform:
    """A recorded descriptor transform (the identity for 'raw' or an older directory's none); IndexDamaged
    when its file is missing, changed, or not what was recorded."""
    if not (recorded or {}).get("file"):
        return IDENTITY
    path = index_dir / recorded["file"]
    saved = _load_checked(path, recorded, "a descriptor transform")
    try:
        transform = DescriptorTransform.from_array(recorded["descriptor"], recorded["power"], saved)
    except (KeyError, ValueError) as error:
        raise IndexDamaged(f"{path}: {error}; rebuild with --force") from None
    if transform.sha1 != recorded.get("sha1"):
        raise IndexDamaged(f"{path} is not the transform the manifest records; rebuild with --force")
    return transform


def descriptors_name(fingerprint: str) -> str:
    return f"descriptors.{fingerprint[:12]}.npy"


def read_descriptors(index_dir: Path, recorded: dict, count: int, dimensions: int) -> np.ndarray:
    """The descriptors of every stored row, memory-mapped, checked against their checksum and shape."""
    path = index_dir / recorded["file"]
    descriptors = _load_checked(path, recorded, "descriptors", mmap=True)
    if descriptors.shape != (count, dimensions) or descriptors.dtype != np.float32:
        raise IndexDamaged(f"{path} holds {descriptors.shape} {descriptors.dtype} values, not the "
                           f"({count}, {dimensions}) float32 descriptors of this store; rebuild with --force")
    return descriptors


@contextlib.contextmanager
def build_lock(index_dir: Path) -> Iterator[None]:
    """One builder per index directory at a time; a second one waits, then finds the work done.

    Whoever holds it may delete temporary files that interrupted builds left."""
    with open(index_dir / LOCK, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        for leftover in index_dir.glob(f"{TEMPORARY_PREFIX}*.tmp"):
            leftover.unlink(missing_ok=True)
        yield


def codes_names(fingerprint: str, with_descriptors: bool) -> dict[str, str]:
    return {part: f"codes.{fingerprint[:12]}.{part}.npy" for part in CODE_FILES
            if with_descriptors or part != "descriptors"}


def shared_files(record: dict | None) -> set[str]:
    """The file names a shared record (transform, descriptors, projection, codes) refers to."""
    record = record or {}
    return {record["file"]} if record.get("file") else set((record.get("files") or {}).values())


def read_codes(index_dir: Path, recorded: dict, years: np.ndarray, metric: str,
               descriptor_dimensions: int) -> tuple[ProjectionCodes, DescriptorCodes | None]:
    """The recorded codes, memory-mapped, checked against their checksums, shapes and the store's rows."""
    files = recorded.get("files") or {}
    if "projection" not in files or "extra" not in files or "scales" not in files:
        raise IndexDamaged(f"{index_dir / MANIFEST}: the record of the codes is damaged; {REBUILD}")
    arrays = {part: _load_checked(index_dir / name, {"checksum": (recorded.get("checksums") or {}).get(part)},
                                  f"codes ({part})", mmap=part != "scales") for part, name in files.items()}
    codes, extra, scales = arrays["projection"], arrays["extra"], arrays["scales"]
    count, k = codes.shape if codes.ndim == 2 else (-1, -1)
    descriptors = arrays.get("descriptors")
    expected_scales = k + (descriptor_dimensions if descriptors is not None else 0)
    if count != len(years) or codes.dtype != np.int8 or extra.shape != (count,) or extra.dtype != np.float32 \
            or scales.shape != (expected_scales,) or scales.dtype != np.float32 or (
            descriptors is not None and (descriptors.shape != (count, descriptor_dimensions)
                                         or descriptors.dtype != np.int8)):
        raise IndexDamaged(f"{index_dir / files['projection']}: the codes are not those of this store's "
                           f"{len(years)} rows; {REBUILD}")
    order = np.argsort(years, kind="stable")  # how the build sorted them
    projection = ProjectionCodes(codes, extra, scales[:k], order, years[order],
                                 -1.0 if metric == "dot" else -2.0)
    return projection, None if descriptors is None else DescriptorCodes(descriptors, scales[k:])


def collect_garbage(index_dir: Path, manifest: dict) -> None:
    """Delete our index files that the manifest no longer names: replaced by --force, or left by a
    build interrupted between writing a file and recording it. Files of other tools are left alone."""
    pending = manifest.get("pending") or {}
    entries = [*manifest["indices"].values(), *(pending.get("indices") or {}).values()]
    referenced = {entry[name] for entry in entries for name in FILES if name in entry}
    for record in SHARED:
        referenced |= shared_files(manifest.get(record)) | shared_files(pending.get(record))
    for path in index_dir.iterdir():
        if OUR_FILE.match(path.name) and path.name not in referenced:
            path.unlink(missing_ok=True)


def verify(index_dir: Path) -> tuple[int, list[str]]:
    """Check every file the manifest names against its size and checksum: (files checked, problems).

    Reads every index file once; what it finds is what the next build rebuilds."""
    manifest = read_manifest(index_dir)
    if manifest is None:
        return 0, [f"{index_dir}: no indices built"]
    problems, checked = [], 0
    readers = {"transform": lambda record: read_transform(index_dir, record),
               "descriptors": lambda record: _load_checked(index_dir / record["file"], record, "descriptors",
                                                           mmap=True),
               "projection": lambda record: read_projection(index_dir, manifest.get("metric", "euclidean"),
                                                            record)}
    for name, read in readers.items():
        record = manifest.get(name) or {}
        if record.get("file"):
            checked += 1
            try:
                read(record)
            except IndexDamaged as error:
                problems.append(str(error))
    codes = manifest.get("codes") or {}
    for part, name in (codes.get("files") or {}).items():
        checked += 1
        try:
            _load_checked(index_dir / name, {"checksum": (codes.get("checksums") or {}).get(part)}, "codes",
                          mmap=True)
        except IndexDamaged as error:
            problems.append(str(error))
    for key, entry in sorted((manifest.get("indices") or {}).items()):
        checked += sum(kind in entry for kind in FILES) if isinstance(entry, dict) else 1
        problem = damage(index_dir, entry if isinstance(entry, dict) else {})
        if problem is not None:
            problems.append(f"index {key}: {problem}")
    return checked, problems
