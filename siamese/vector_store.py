"""The vector store: one feature vector per image, for a whole collection, on disk.

Layout of a vector directory (see docs/vector-store.md):

    store.json     manifest: model, n_dimensions, dtype, and the committed row count
    vectors.f32    all vectors, little-endian float32, row-major, appended batch by batch
    items.jsonl    one JSON object per row (urn, date, year, path, metadata), same order

Why this shape: 426,777 x 2048 float32 is 3.5 GB, so it must be memory-mapped rather than loaded, and
one file per image would mean 426,777 files. Both data files only ever grow; the manifest, rewritten
atomically (temp file + rename) after the data is flushed, says how much of them is committed. A process
killed at any moment leaves at most an uncommitted tail, which readers never see and the next writer cuts
off, so a crash can lose the batch in flight but never corrupt what was stored.
"""

from __future__ import annotations

import fcntl
import json
import operator
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

FORMAT = "siamese-vector-store"
VERSION = 1
MANIFEST = "store.json"
VECTORS = "vectors.f32"
ITEMS = "items.jsonl"
LOCK = ".lock"
DTYPE = np.dtype("<f4")


class StoreError(ValueError):
    """The vector directory is missing, is not a store, or does not fit what was asked of it."""


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a half-written one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class VectorStore:
    """Read access to a vector directory: vectors memory-mapped, items loaded on first use."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST
        if not manifest_path.is_file():
            raise StoreError(f"{self.directory} is not a vector store (no {MANIFEST}); "
                             "create one with extract_vectors.py")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise StoreError(f"{manifest_path}: unreadable manifest ({error})") from None
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise StoreError(f"{manifest_path}: not a {FORMAT} version {VERSION} manifest")
        self.manifest: dict = manifest
        self.model: str = manifest["model"]
        self.n_dimensions: int = int(manifest["n_dimensions"])
        self.count: int = int(manifest["count"])
        self._items_bytes: int = int(manifest["items_bytes"])
        self._vectors: np.ndarray | None = None
        self._items: _JsonLines | None = None
        self._urns: list[str] | None = None
        self._years: np.ndarray | None = None
        self._row_of_urn: dict[str, int] | None = None

    @classmethod
    def create(cls, directory: str | os.PathLike, model: str, n_dimensions: int) -> VectorStore:
        """Make an empty store for vectors of `model`; an existing store must match it exactly."""
        directory = Path(directory)
        if (directory / MANIFEST).exists():
            store = cls(directory)
            if store.model != model or store.n_dimensions != n_dimensions:
                raise StoreError(
                    f"{directory} holds {store.n_dimensions}-d vectors of model {store.model!r}, not "
                    f"{n_dimensions}-d vectors of {model!r}: vectors of different models cannot be "
                    "compared; use another vector directory or the store's own model")
            return store
        directory.mkdir(parents=True, exist_ok=True)
        for name in (VECTORS, ITEMS):
            (directory / name).touch()
        manifest = {"format": FORMAT, "version": VERSION, "model": model,
                    "n_dimensions": int(n_dimensions), "dtype": DTYPE.str, "count": 0,
                    "items_bytes": 0}
        write_atomically(directory / MANIFEST, json.dumps(manifest, indent=2).encode())
        return cls(directory)

    def __len__(self) -> int:
        return self.count

    @property
    def vectors(self) -> np.ndarray:
        """All committed vectors as a read-only (count, n_dimensions) memory map."""
        if self._vectors is None:
            if self.count == 0:
                self._vectors = np.zeros((0, self.n_dimensions), dtype=DTYPE)
            else:
                self._vectors = np.memmap(self.directory / VECTORS, dtype=DTYPE, mode="r",
                                          shape=(self.count, self.n_dimensions))
        return self._vectors

    @property
    def items(self) -> Sequence[dict]:
        """One dict per row (urn, date, year, path, metadata), parsed from its JSON line when asked for.

        Kept as raw JSON lines plus offsets rather than as 426,777 dicts: that is about a fifth of the
        memory, which matters in every worker of the web app.
        """
        self._load_items()
        assert self._items is not None
        return self._items

    @property
    def urns(self) -> list[str]:
        self._load_items()
        assert self._urns is not None
        return self._urns

    def __contains__(self, urn: object) -> bool:
        try:
            return urn in self._urn_index()
        except TypeError:  # unhashable: certainly not a urn of ours
            return False

    def row_of(self, urn: str) -> int:
        """The row of `urn`; KeyError naming the urn when the store does not hold it."""
        try:
            return self._urn_index()[urn]
        except (KeyError, TypeError):
            raise KeyError(f"urn {urn!r} is not in the vector store {self.directory}") from None

    def _urn_index(self) -> dict[str, int]:
        if self._row_of_urn is None:
            self._row_of_urn = {urn: row for row, urn in enumerate(self.urns)}
        return self._row_of_urn

    def _load_items(self) -> None:
        if self._items is not None:
            return
        with open(self.directory / ITEMS, "rb") as handle:
            committed = handle.read(self._items_bytes)
        ends = np.flatnonzero(np.frombuffer(committed, dtype=np.uint8) == ord("\n")) + 1
        if len(ends) != self.count:
            raise StoreError(f"{self.directory}: {ITEMS} holds {len(ends)} committed rows, "
                             f"the manifest {self.count}")
        offsets = np.concatenate([[0], ends]).astype(np.int64)
        urns, years = [], np.empty(self.count, dtype=np.int64)
        for row, line in enumerate(committed.splitlines()):
            item = json.loads(line)
            urns.append(item["urn"])
            years[row] = item["year"]
        self._urns, self._years = urns, years
        self._items = _JsonLines(committed, offsets)

    def years(self) -> np.ndarray:
        """The year of every row, as an int array (what period assignment needs)."""
        self._load_items()
        assert self._years is not None
        return self._years.copy()


class _JsonLines(Sequence):
    """A read-only list of dicts backed by JSON lines, each parsed when it is read."""

    def __init__(self, data: bytes, offsets: np.ndarray) -> None:
        self._data = data
        self._offsets = offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        row = operator.index(index)
        if row < 0:
            row += len(self)
        if not 0 <= row < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} items")
        return json.loads(self._data[self._offsets[row]:self._offsets[row + 1]])


class VectorStoreWriter:
    """Appends batches to a store; one writer at a time (an exclusive lock on the directory)."""

    def __init__(self, directory: str | os.PathLike, model: str, n_dimensions: int) -> None:
        self.store = VectorStore.create(directory, model, n_dimensions)
        self.directory = self.store.directory
        self._lock = open(self.directory / LOCK, "w")  # noqa: SIM115 - held for the writer's lifetime
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StoreError(f"{self.directory} is being written by another process") from None
        self.store = VectorStore(self.directory)  # re-read under the lock
        self._cut_uncommitted_tail()
        self.urns: set[str] = set(self.store.urns)

    def _cut_uncommitted_tail(self) -> None:
        """Drop what a killed writer appended after its last commit."""
        row_bytes = self.store.n_dimensions * DTYPE.itemsize
        os.truncate(self.directory / VECTORS, self.store.count * row_bytes)
        os.truncate(self.directory / ITEMS, self.store._items_bytes)

    def append(self, vectors: np.ndarray, items: Sequence[dict]) -> None:
        """Store one batch and commit it: after this returns, a crash cannot lose it."""
        vectors = np.ascontiguousarray(vectors, dtype=DTYPE)
        if vectors.ndim != 2 or vectors.shape != (len(items), self.store.n_dimensions):
            raise ValueError(f"expected a ({len(items)}, {self.store.n_dimensions}) array of vectors, "
                             f"got shape {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise ValueError("refusing to store vectors with NaN or infinite values")
        new_urns = [item["urn"] for item in items]
        if len(set(new_urns)) != len(new_urns) or self.urns.intersection(new_urns):
            raise ValueError("urns must be unique within the store")
        lines = b"".join(json.dumps(item, ensure_ascii=False).encode() + b"\n" for item in items)
        for name, data in ((VECTORS, vectors.tobytes()), (ITEMS, lines)):
            with open(self.directory / name, "ab") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        manifest = dict(self.store.manifest, count=self.store.count + len(items),
                        items_bytes=self.store._items_bytes + len(lines))
        write_atomically(self.directory / MANIFEST, json.dumps(manifest, indent=2).encode())
        self.store.manifest = manifest
        self.store.count = manifest["count"]
        self.store._items_bytes = manifest["items_bytes"]
        self.store._vectors = self.store._items = self.store._urns = self.store._row_of_urn = None
        self.urns.update(new_urns)

    def close(self) -> None:
        self._lock.close()

    def __enter__(self) -> VectorStoreWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def iter_batches(count: int, batch_size: int) -> Iterator[slice]:
    """Slices of at most `batch_size` rows covering range(count); used to stream over big stores."""
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))
