"""The index directory's on-disk contract: the manifest, file names, atomic saves, the lock, clean-up.

    INDEX_DIR/index.json                       the manifest (format, version, settings, every index)
    INDEX_DIR/projection.<sha1>.npy            the PCA projection: row 0 the mean, rows 1.. the components
    INDEX_DIR/all.<fingerprint>.ann|.rows.npy|.scan.npy           the whole collection's index
    INDEX_DIR/step<S>_<START>.<fingerprint>.ann|.rows.npy|.scan.npy   one period's index

This module is the only code that knows these names and the manifest's keys. Every file is written
under a temporary name and renamed into place, and the manifest is rewritten after each index, so an
interrupted build resumes where it stopped and a reader never sees half an index. File names carry a
fingerprint of the index's rows and settings: a rebuilt index never overwrites a file that a running
reader has memory-mapped.
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

from siamese.projection import Projection
from siamese.vector_store import VectorStore, write_atomically

MANIFEST = "index.json"
FORMAT = "siamese-annoy-indices"
VERSION = 1
WHOLE = "all"  # the key of the whole-collection index, in the manifest and in answers
FILES = ("annoy", "rows", "scan")  # the files of one index, as the manifest names them
TEMPORARY_PREFIX = ".annoy-indexer-"
LOCK = ".lock"
OUR_FILE = re.compile(r"^((all|step\d+_-?\d+)\.[0-9a-f]{12}\.(ann|rows\.npy|scan\.npy)"
                      r"|projection\.[0-9a-f]{12}\.npy)$")  # what garbage collection may delete


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


def new_manifest(settings: dict) -> dict:
    """An empty manifest for indices of `settings` (metric, model, n_dimensions, index_dimensions,
    n_trees)."""
    return {"format": FORMAT, "version": VERSION, **settings, "projection": None, "complete": {},
            "indices": {}}


def write_manifest(index_dir: Path, manifest: dict) -> None:
    write_atomically(index_dir / MANIFEST, json.dumps(manifest, indent=1).encode())


def store_state(store: VectorStore) -> dict:
    """What identifies the store's content cheaply; a store only grows, so this changes when it does."""
    return {"model": store.model, "n_dimensions": store.n_dimensions, "count": store.count,
            "items_bytes": store.manifest.get("items_bytes")}


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


def file_names(key: str, fingerprint: str, with_scan: bool) -> dict[str, str]:
    """The file names of one index, by the manifest's names for them (FILES)."""
    stem = f"{key if key == WHOLE else 'step' + key.replace('/', '_')}.{fingerprint[:12]}"
    names = {"annoy": f"{stem}.ann", "rows": f"{stem}.rows.npy"}
    if with_scan:
        names["scan"] = f"{stem}.scan.npy"
    return names


def missing_files(index_dir: Path, entry: dict) -> bool:
    return any(not (index_dir / entry[name]).is_file() for name in FILES if name in entry)


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


def save_projection(index_dir: Path, projection: Projection, sha1: str) -> str:
    """Write the projection's file; returns its name for the manifest."""
    name = f"projection.{sha1[:12]}.npy"
    save_npy(index_dir / name, np.vstack([projection.mean[None, :], projection.components.T]))
    return name


def read_projection(index_dir: Path, manifest: dict) -> Projection:
    """The manifest's projection (the identity when the vectors are indexed as they are)."""
    name = (manifest.get("projection") or {}).get("file")
    if not name:
        return Projection(manifest["metric"])
    saved = np.load(index_dir / name)  # row 0: the mean; rows 1..k: the components
    return Projection(manifest["metric"], saved[0], np.ascontiguousarray(saved[1:].T))


@contextlib.contextmanager
def build_lock(index_dir: Path) -> Iterator[None]:
    """One builder per index directory at a time; a second one waits, then finds the work done.

    Whoever holds it may delete temporary files that interrupted builds left."""
    with open(index_dir / LOCK, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        for leftover in index_dir.glob(f"{TEMPORARY_PREFIX}*.tmp"):
            leftover.unlink(missing_ok=True)
        yield


def collect_garbage(index_dir: Path, manifest: dict) -> None:
    """Delete our index files that the manifest no longer names: replaced by --force, or left by a
    build interrupted between writing a file and recording it. Files of other tools are left alone."""
    referenced = {entry[name] for entry in manifest["indices"].values() for name in FILES if name in entry}
    referenced.add((manifest.get("projection") or {}).get("file"))
    for path in index_dir.iterdir():
        if OUR_FILE.match(path.name) and path.name not in referenced:
            path.unlink(missing_ok=True)


def remove_replaced(index_dir: Path, replaced: dict | None, entry: dict) -> None:
    """Delete the files of the index that `entry` replaces (a reader's memory map of them stays valid)."""
    for name in FILES:
        if replaced and name in replaced and replaced[name] != entry.get(name):
            (index_dir / replaced[name]).unlink(missing_ok=True)
