"""The vector store: one feature vector per image, for a whole collection, on disk.

Layout of a vector directory (see docs/vector-store.md):

    store.json       manifest: model, n_dimensions, dtype, the committed row count and lengths
    vectors.f32      all vectors, little-endian float32, row-major, appended batch by batch
    items.jsonl      one JSON object per row (urn, date, year, path, metadata), same order
    checksums.jsonl  one line per batch: its rows, its bytes of items.jsonl, and the xxh3-64 of both

Why this shape: 426,777 x 2048 float32 is 3.5 GB, so it must be memory-mapped rather than loaded, and
one file per image would mean 426,777 files. Both data files only ever grow; the manifest, rewritten
atomically (temp file + rename) after the data is flushed, says how much of them is committed. A process
killed at any moment leaves at most an uncommitted tail, which readers never see and the next writer cuts
off, so a crash can lose the batch in flight but never corrupt what was stored. The checksums catch
what a crash cannot cause but a disk, a copy or a hand edit can: a flipped byte in a stored row is an
error naming the file and the rows, never a silently different answer.
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
import xxhash

from siamese.images import INPUT_MODES, check_input_mode
from siamese.system import process_running

FORMAT = "siamese-vector-store"
VERSION = 1
MANIFEST = "store.json"
VECTORS = "vectors.f32"
ITEMS = "items.jsonl"
CHECKSUMS = "checksums.jsonl"
LOCK = ".lock"
DTYPE = np.dtype("<f4")
MAX_ABS_VALUE = 1e15  # larger values would overflow float32 distances (2,048 squares of them)
ITEM_FIELDS = {"urn": str, "date": str, "year": int, "path": str}


def checksum(data: bytes | memoryview | np.ndarray) -> str:
    """xxh3-64 of the bytes, in hex: about 20 GB/s, so a whole 3.5 GB store is checked in a fraction
    of a second once it is in the page cache."""
    if isinstance(data, np.ndarray):
        data = memoryview(np.ascontiguousarray(data)).cast("B")
    return xxhash.xxh3_64_hexdigest(data)


def unusable_rows(vectors: np.ndarray) -> np.ndarray:
    """A mask of the rows that must not be stored: NaN, infinite, or beyond MAX_ABS_VALUE."""
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(vectors).all(axis=1) | (np.abs(vectors) > MAX_ABS_VALUE).any(axis=1)


def remove_stale_temporaries(directory: Path) -> int:
    """Delete write_atomically's temporary files that a killed process left in `directory` (those of
    processes still running are theirs to finish); returns how many were deleted."""
    removed = 0
    for path in directory.glob(".*.tmp"):
        pid = path.name.rsplit(".", 2)[-2].split("-")[0]
        if not pid.isdigit():
            continue
        if process_running(int(pid)):
            continue  # still writing it
        path.unlink(missing_ok=True)
        removed += 1
    return removed


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


def _field(manifest: dict, name: str, kind: type, path: Path, minimum: int = 0) -> object:
    value = manifest.get(name)
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise StoreError(f"{path} is damaged: {name!r} must be a whole number >= {minimum}, got {value!r}")
    if kind is str and not (isinstance(value, str) and value):
        raise StoreError(f"{path} is damaged: {name!r} must be a name, got {value!r}")
    return value


def bad_fields(item: dict) -> list[str]:
    """The fields every item needs (urn, date, year, path) that it lacks or holds with the wrong type."""
    return [name for name, kind in ITEM_FIELDS.items()
            if not isinstance(item.get(name), kind) or isinstance(item.get(name), bool)]


def _item(line: bytes, row: int, path: Path) -> dict:
    """One committed line of items.jsonl, checked: a damaged line is an error naming it."""
    try:
        item = json.loads(line)
    except ValueError:
        item = None
    if not isinstance(item, dict) or bad_fields(item):
        raise StoreError(f"{path} line {row + 1} is damaged (not an item with {', '.join(ITEM_FIELDS)}); "
                         "re-extract into a new vector directory")
    return item


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
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
                or manifest.get("version") != VERSION:
            raise StoreError(f"{manifest_path}: not a {FORMAT} version {VERSION} manifest")
        self.manifest: dict = manifest
        self.model: str = _field(manifest, "model", str, manifest_path)
        # how the images were shown to the model (siamese.images.INPUT_MODES); stores of before: colour
        self.input_mode: str = manifest.get("input_mode", "colour")
        if self.input_mode not in INPUT_MODES:
            raise StoreError(f"{manifest_path} is damaged: 'input_mode' must be one of {INPUT_MODES}, got "
                             f"{self.input_mode!r}")
        self.n_dimensions: int = _field(manifest, "n_dimensions", int, manifest_path, minimum=1)
        self.count: int = _field(manifest, "count", int, manifest_path)
        self._items_bytes: int = _field(manifest, "items_bytes", int, manifest_path)
        self._checksums_bytes: int | None = (None if "checksums_bytes" not in manifest else
                                             _field(manifest, "checksums_bytes", int, manifest_path))
        self._check_lengths()
        self._vectors: np.ndarray | None = None
        self._items: _JsonLines | None = None
        self._urns: list[str] | None = None
        self._years: np.ndarray | None = None
        self._row_of_urn: dict[str, int] | None = None

    def _check_lengths(self) -> None:
        """Every data file at least as long as the manifest commits (longer: an uncommitted tail)."""
        committed = {VECTORS: self.count * self.n_dimensions * DTYPE.itemsize, ITEMS: self._items_bytes}
        if self._checksums_bytes is not None:
            committed[CHECKSUMS] = self._checksums_bytes
        for name, length in committed.items():
            path = self.directory / name
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise StoreError(f"{path} is missing; the store is damaged (re-extract into a new "
                                 "vector directory)") from None
            if size < length:
                raise StoreError(f"{path} is {size:,} bytes but {MANIFEST} commits {length:,}: the file "
                                 "was truncated; the store is damaged (re-extract into a new vector "
                                 "directory)")

    @property
    def has_checksums(self) -> bool:
        """False for a store written before checksums existed (a writer records them when it opens it)."""
        return self._checksums_bytes is not None

    def batches(self) -> list[dict]:
        """The committed checksum lines: {"rows": [start, stop], "items_bytes": [start, stop],
        "vectors", "items"}; StoreError when they do not cover the store exactly."""
        if self._checksums_bytes is None:
            return []
        path = self.directory / CHECKSUMS
        with open(path, "rb") as handle:
            data = handle.read(self._checksums_bytes)
        batches, row, offset = [], 0, 0
        for number, line in enumerate(data.splitlines(), 1):
            try:
                batch = json.loads(line)
                (start, stop), (first, last) = batch["rows"], batch["items_bytes"]
                batch["vectors"], batch["items"]  # noqa: B018 - present
            except (ValueError, KeyError, TypeError):
                raise StoreError(f"{path} line {number} is damaged; the store's checksums cannot be "
                                 "read") from None
            if (start, first) != (row, offset) or stop < start or last < first:
                raise StoreError(f"{path} line {number} does not follow the line before it; the store's "
                                 "checksums are damaged")
            row, offset = stop, last
            batches.append(batch)
        if (row, offset) != (self.count, self._items_bytes):
            raise StoreError(f"{path} covers {row:,} rows, {MANIFEST} commits {self.count:,}; the store's "
                             "checksums are damaged")
        return batches

    def verify(self) -> None:
        """Check every committed byte against the checksums (StoreError naming the file and rows).

        The vectors are read once (a fraction of a second per GB once cached); the items are checked
        when they are first loaded, and here too."""
        batches = self.batches()
        if not batches:
            return
        vectors = np.asarray(self.vectors).reshape(-1) if self.count else np.zeros(0, DTYPE)
        width = self.n_dimensions
        for batch in batches:
            start, stop = batch["rows"]
            if checksum(vectors[start * width:stop * width]) != batch["vectors"]:
                raise StoreError(f"{self.directory / VECTORS}: rows {start:,}-{stop - 1:,} do not match "
                                 "their checksum: the file was changed or damaged after it was written; "
                                 "re-extract into a new vector directory")
        self._load_items()

    def count_unusable_rows(self, batch_size: int = 65_536) -> int:
        """How many stored rows hold NaN, infinite or out-of-range values (only a store written before
        such rows were refused can hold any)."""
        return sum(int(unusable_rows(np.asarray(self.vectors[rows])).sum())
                   for rows in iter_batches(self.count, batch_size))

    @classmethod
    def create(cls, directory: str | os.PathLike, model: str, n_dimensions: int,
               input_mode: str = "colour") -> VectorStore:
        """Make an empty store for vectors of `model` (of images shown to it as `input_mode` says);
        an existing store must match it exactly."""
        check_input_mode(input_mode)
        directory = Path(directory)
        if (directory / MANIFEST).exists():
            store = cls(directory)
            if store.model != model or store.n_dimensions != n_dimensions:
                raise StoreError(
                    f"{directory} holds {store.n_dimensions}-d vectors of model {store.model!r}, not "
                    f"{n_dimensions}-d vectors of {model!r}: vectors of different models cannot be "
                    "compared; use another vector directory or the store's own model")
            if store.input_mode != input_mode:
                raise StoreError(
                    f"{directory} holds vectors of {store.input_mode} input, not {input_mode}: vectors of "
                    f"images shown differently cannot be compared; use another vector directory or "
                    f"--input {store.input_mode}")
            return store
        directory.mkdir(parents=True, exist_ok=True)
        for name in (VECTORS, ITEMS, CHECKSUMS):
            (directory / name).touch()
        manifest = {"format": FORMAT, "version": VERSION, "model": model, "input_mode": input_mode,
                    "n_dimensions": int(n_dimensions), "dtype": DTYPE.str, "count": 0,
                    "items_bytes": 0, "checksums_bytes": 0, "checksum": "xxh3-64"}
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

    def items_of(self, rows: Sequence[int]) -> dict[int, dict]:
        """{row: item} for many rows at once (an answer's neighbours), parsed in one go."""
        unique = list(dict.fromkeys(rows))
        for row in unique:
            if not 0 <= row < self.count:
                raise IndexError(f"row {row} out of range for {self.count} items")
        return dict(zip(unique, self.items.many(unique), strict=True))

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
        path = self.directory / ITEMS
        with open(path, "rb") as handle:
            committed = handle.read(self._items_bytes)
        for batch in self.batches():
            first, last = batch["items_bytes"]
            if checksum(memoryview(committed)[first:last]) != batch["items"]:
                start, stop = batch["rows"]
                raise StoreError(f"{path}: rows {start:,}-{stop - 1:,} do not match their checksum: the "
                                 "file was changed or damaged after it was written; re-extract into a "
                                 "new vector directory")
        ends = np.flatnonzero(np.frombuffer(committed, dtype=np.uint8) == ord("\n")) + 1
        if len(ends) != self.count:
            raise StoreError(f"{path} holds {len(ends)} committed rows, the manifest {self.count}")
        offsets = np.concatenate([[0], ends]).astype(np.int64)
        urns, years = [], np.empty(self.count, dtype=np.int64)
        for row, line in enumerate(committed.splitlines()):
            item = _item(line, row, path)
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

    def many(self, rows: Sequence[int]) -> list[dict]:
        """The items of `rows` (valid row numbers), parsed in one go: an answer of 500 neighbours parsed
        line by line spent 2.5 ms in json.loads' per-call overhead, as one JSON array 0.6 ms."""
        data, offsets = self._data, self._offsets
        return json.loads(b"[" + b",".join([data[offsets[row]:offsets[row + 1]] for row in rows]) + b"]")


class VectorStoreWriter:
    """Appends batches to a store; one writer at a time (an exclusive lock on the directory)."""

    def __init__(self, directory: str | os.PathLike, model: str, n_dimensions: int,
                 input_mode: str = "colour") -> None:
        self.store = VectorStore.create(directory, model, n_dimensions, input_mode)
        self.directory = self.store.directory
        self._lock = open(self.directory / LOCK, "w")  # noqa: SIM115 - held for the writer's lifetime
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StoreError(f"{self.directory} is being written by another process") from None
        self.store = VectorStore(self.directory)  # re-read under the lock
        remove_stale_temporaries(self.directory)  # write_atomically's, from a killed writer
        self._cut_uncommitted_tail()
        self.urns: set[str] = set(self.store.urns)
        if not self.store.has_checksums:
            self._record_existing_checksums()

    def _cut_uncommitted_tail(self) -> None:
        """Drop what a killed writer appended after its last commit."""
        row_bytes = self.store.n_dimensions * DTYPE.itemsize
        os.truncate(self.directory / VECTORS, self.store.count * row_bytes)
        os.truncate(self.directory / ITEMS, self.store._items_bytes)
        if self.store.has_checksums:
            os.truncate(self.directory / CHECKSUMS, self.store._checksums_bytes)

    def _record_existing_checksums(self) -> None:
        """A store written before checksums existed: record one for the rows it holds (from now on
        their damage is detected; damage from before cannot be told apart from data)."""
        (self.directory / CHECKSUMS).write_bytes(b"")
        line = b""
        if self.store.count:
            with open(self.directory / ITEMS, "rb") as handle:
                items = handle.read(self.store._items_bytes)
            line = _checksum_line(0, self.store.count, 0, len(items),
                                  checksum(np.asarray(self.store.vectors)), checksum(items))
        self._commit(line, self.store.manifest, self.store.count, self.store._items_bytes, 0)

    def append(self, vectors: np.ndarray, items: Sequence[dict]) -> None:
        """Store one batch and commit it: after this returns, a crash cannot lose it."""
        vectors = np.ascontiguousarray(vectors, dtype=DTYPE)
        if vectors.ndim != 2 or vectors.shape != (len(items), self.store.n_dimensions):
            raise ValueError(f"expected a ({len(items)}, {self.store.n_dimensions}) array of vectors, "
                             f"got shape {vectors.shape}")
        if unusable_rows(vectors).any():
            raise ValueError(f"refusing to store vectors with NaN, infinite or out-of-range values "
                             f"(beyond {MAX_ABS_VALUE:g}); callers reject such rows one by one")
        new_urns = [item["urn"] for item in items]
        if len(set(new_urns)) != len(new_urns) or self.urns.intersection(new_urns):
            raise ValueError("urns must be unique within the store")
        for item in items:
            bad = bad_fields(item)
            if bad:
                raise ValueError(f"item {item.get('urn')!r}: {', '.join(bad)} missing or of the wrong type")
        lines = b"".join(json.dumps(item, ensure_ascii=False).encode() + b"\n" for item in items)
        data = vectors.tobytes()
        for name, chunk in ((VECTORS, data), (ITEMS, lines)):
            with open(self.directory / name, "ab") as handle:
                handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
        store = self.store
        line = _checksum_line(store.count, store.count + len(items), store._items_bytes,
                              store._items_bytes + len(lines), checksum(data), checksum(lines))
        self._commit(line, store.manifest, store.count + len(items), store._items_bytes + len(lines),
                     store._checksums_bytes or 0)
        self.urns.update(new_urns)

    def _commit(self, line: bytes, manifest: dict, count: int, items_bytes: int,
                checksums_bytes: int) -> None:
        """Append the batch's checksum line, then replace the manifest: the commit point."""
        with open(self.directory / CHECKSUMS, "ab") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        manifest = dict(manifest, count=count, items_bytes=items_bytes,
                        checksums_bytes=checksums_bytes + len(line), checksum="xxh3-64")
        write_atomically(self.directory / MANIFEST, json.dumps(manifest, indent=2).encode())
        store = self.store
        store.manifest = manifest
        store.count, store._items_bytes = count, items_bytes
        store._checksums_bytes = manifest["checksums_bytes"]
        store._vectors = store._items = store._urns = store._row_of_urn = None

    def close(self) -> None:
        self._lock.close()

    def __enter__(self) -> VectorStoreWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _checksum_line(start: int, stop: int, first: int, last: int, vectors: str, items: str) -> bytes:
    return json.dumps({"rows": [start, stop], "items_bytes": [first, last], "vectors": vectors,
                       "items": items}).encode() + b"\n"


def iter_batches(count: int, batch_size: int) -> Iterator[slice]:
    """Slices of at most `batch_size` rows covering range(count); used to stream over big stores."""
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))
