"""The collection map's on-disk contract (made by make_map.py, siamese/map_build.py), and reading it.

    INDEX_DIR/map.json                         the map's manifest (format, version, settings, files, clusters)
    INDEX_DIR/map-layout.<sha>.npy             float32 (rows, 2): every mapped row's place, in [0, 1] on both
                                               axes, the aspect ratio kept (the longer side spans 0..1)
    INDEX_DIR/map-clusters.<sha>.npy           uint16 (rows,): every mapped row's cluster
    INDEX_DIR/map-centroids.<sha>.npy          float32 (clusters, dims): the clusters' centres in the space
                                               they were found in (where a new row's cluster is looked up)
    INDEX_DIR/map-atlas-<i>.<sha>.jpg          sprite atlases: row r in atlas r // PER_ATLAS, cell
                                               r % PER_ATLAS
    INDEX_DIR/map-overview.<sha>.png           the whole map, small, points coloured by year

The map sits beside the indices it was made from but is its own generation: the index build never
reads or deletes these files, and a map build never touches the indices. Like the indices, every file
is written under a temporary name and renamed into place, named by a hash of its content, and
recorded with its checksum; what a build has finished is kept under the manifest's "pending" key, so
an interrupted build resumes there, and readers see only the complete map of the top-level keys.
This module is the only code that knows these names; siamese/map_build.py makes them.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from siamese.index_dir import file_checksum as checksum_of
from siamese.index_dir import fsync, temporary
from siamese.periods import periods_between
from siamese.vector_store import write_atomically

MAP_MANIFEST = "map.json"
FORMAT = "siamese-map"
VERSION = 1
CELL = 64  # an atlas cell, in pixels: a thumbnail fitted into it
COLUMNS = 32  # cells per atlas row: an atlas is at most 2,048 x 2,048 pixels
PER_ATLAS = COLUMNS * COLUMNS
NO_YEAR = -32768  # a year outside int16 in the binary points
COORDINATE = 65535  # the binary points' x and y span 0..COORDINATE
MAP_LOCK = ".map-lock"
REMAKE = "make it again with: python make_map.py VECTOR_DIR INDEX_DIR --force"
NO_MAP = "no map built for this collection; make it with: python make_map.py VECTOR_DIR INDEX_DIR " \
         "--thumbnails THUMBNAIL_DIR"


class MapDamaged(ValueError):
    """A map file is missing or changed since it was written; the message names it and the remedy."""


def read_map_manifest(index_dir: str | os.PathLike) -> dict | None:
    """The map's manifest, or None when no map was made in this index directory."""
    path = Path(index_dir) / MAP_MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise MapDamaged(f"{path}: unreadable map manifest ({error}); {REMAKE}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or \
            manifest.get("version") != VERSION:
        raise MapDamaged(f"{path} is not a map of this version; {REMAKE}")
    return manifest


def write_map_manifest(index_dir: Path, manifest: dict) -> None:
    write_atomically(index_dir / MAP_MANIFEST, json.dumps(manifest, indent=1).encode())


def content_name(kind: str, data: bytes, suffix: str, number: int | None = None) -> str:
    """A file name carrying a hash of its content: a remade file never overwrites one a server reads."""
    digest = hashlib.sha1(data).hexdigest()[:12]
    return f"map-{kind}{'' if number is None else f'-{number}'}.{digest}.{suffix}"


def save_file(index_dir: Path, name: str, data: bytes) -> dict:
    """Write `data` as `name` atomically (temporary file, fsync, rename); its manifest record."""
    path = index_dir / name
    with temporary(path) as temporary_path:
        temporary_path.write_bytes(data)
        fsync(temporary_path)
        os.replace(temporary_path, path)
    return {"file": name, "size": len(data), "checksum": checksum_of(path)}


def npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def save_array(index_dir: Path, kind: str, array: np.ndarray) -> dict:
    data = npy_bytes(array)
    return save_file(index_dir, content_name(kind, data, "npy"), data)


def check_file(index_dir: Path, record: dict | None, what: str) -> Path:
    """The recorded file's path, checked against its size and checksum (MapDamaged when it differs)."""
    if not isinstance(record, dict) or not isinstance(record.get("file"), str):
        raise MapDamaged(f"{index_dir / MAP_MANIFEST}: the record of the {what} is damaged; {REMAKE}")
    path = index_dir / record["file"]
    try:
        size = path.stat().st_size
    except OSError:
        raise MapDamaged(f"{path} ({what}) is missing; {REMAKE}") from None
    if size != record.get("size") or checksum_of(path) != record.get("checksum"):
        raise MapDamaged(f"{path} ({what}) does not match its checksum; {REMAKE}")
    return path


def load_array(index_dir: Path, record: dict | None, what: str) -> np.ndarray:
    path = check_file(index_dir, record, what)
    try:
        return np.load(path)
    except (OSError, ValueError) as error:
        raise MapDamaged(f"{path} cannot be read as the {what} ({error}); {REMAKE}") from None


def referenced_files(manifest: dict) -> set[str]:
    """Every file name a manifest (its complete map and its pending work) refers to."""
    names: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                if key == "file" and isinstance(inner, str):
                    names.add(inner)
                else:
                    walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)

    walk(manifest)
    return names


def verify_map(index_dir: Path, manifest: dict) -> int:
    """Check every file the complete map names against its size and checksum (MapDamaged naming the
    first that differs); the number of files checked."""
    checked = 0

    def walk(value: object, what: str) -> None:
        nonlocal checked
        if isinstance(value, dict):
            if isinstance(value.get("file"), str):
                check_file(index_dir, value, what)
                checked += 1
            for key, inner in value.items():
                walk(inner, key)
        elif isinstance(value, list):
            for inner in value:
                walk(inner, what)

    walk({key: value for key, value in manifest.items() if key != "pending"}, "map")
    return checked


def collect_garbage(index_dir: Path, manifest: dict, previous: dict | None = None) -> None:
    """Delete map files the manifest no longer names (replaced, or left by an interrupted build), but
    those of the `previous` map: a server reads map.json again within seconds, and until then the pages
    it served ask for that map's atlases; the build after next removes them."""
    keep = referenced_files(manifest) | referenced_files(previous or {})
    for path in index_dir.glob("map-*"):
        if path.name not in keep and path.suffix in (".npy", ".jpg", ".png"):
            path.unlink(missing_ok=True)


def scaled_coordinates(layout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The layout's x and y as the binary points carry them: uint16, 0..COORDINATE."""
    scaled = np.clip(np.rint(np.asarray(layout, dtype=np.float64) * COORDINATE), 0, COORDINATE)
    return scaled[:, 0].astype(np.uint16), scaled[:, 1].astype(np.uint16)


@dataclass
class CollectionMap:
    """A complete map as a server answers from it: points, clusters and their counts per period.

    Read once per map build (the server looks at map.json's signature) and kept in memory: 8 bytes a
    row for the points plus their gzipped copy, a few kB for the clusters."""

    index_dir: Path
    manifest: dict
    x: np.ndarray  # uint16
    y: np.ndarray  # uint16
    clusters: np.ndarray  # uint16
    years: np.ndarray  # int16, NO_YEAR where unknown
    signature: tuple[int, int, int]

    @property
    def count(self) -> int:
        return len(self.x)

    @property
    def version(self) -> str:
        """Changes with every map build: in the URLs of its files and the entity tags of its answers."""
        return hashlib.sha1(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()[:16]

    def binary_points(self) -> bytes:
        """x, y, cluster (uint16) and year (int16) of every row, little-endian, one array after another:
        8 bytes a row, what the map page draws from."""
        if getattr(self, "_binary", None) is None:
            self._binary = b"".join(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
                                    for array in (self.x, self.y, self.clusters, self.years))
            self._gzipped = gzip.compress(self._binary, compresslevel=6, mtime=0)
        return self._binary

    def gzipped_points(self) -> bytes:
        self.binary_points()
        return self._gzipped

    def point(self, row: int, urn: str) -> dict:
        return {"row": row, "urn": urn, "x": int(self.x[row]), "y": int(self.y[row]),
                "cluster": int(self.clusters[row]), "year": None if self.years[row] == NO_YEAR
                else int(self.years[row])}

    def periods(self, steps: list[int]) -> dict[str, list[dict]]:
        """Every period of each step from the first mapped year to the last, with its number of rows."""
        known = self.years[self.years != NO_YEAR].astype(np.int64)
        if not len(known):
            return {str(step): [] for step in steps}
        answer = {}
        for step in steps:
            periods = periods_between(int(known.min()), int(known.max()), step)
            starts = np.array([period.start for period in periods], dtype=np.int64)
            totals = np.bincount(np.searchsorted(starts, known, side="right") - 1, minlength=len(periods))
            answer[str(step)] = [{"period": period.label, "start": period.start, "end": period.end,
                                  "total": int(total)} for period, total in zip(periods, totals, strict=True)]
        return answer

    def cluster_counts(self, steps: list[int]) -> dict[str, np.ndarray]:
        """Each cluster's rows in each period of each step: {step: (clusters, periods) counts}."""
        known = self.years != NO_YEAR
        years, clusters = self.years[known].astype(np.int64), self.clusters[known].astype(np.int64)
        n_clusters = len(self.manifest["clusters"]["info"])
        answer = {}
        for step, periods in self.periods(steps).items():
            starts = np.array([period["start"] for period in periods], dtype=np.int64)
            if not len(starts):
                answer[step] = np.zeros((n_clusters, 0), dtype=np.int64)
                continue
            period_of_row = np.searchsorted(starts, years, side="right") - 1
            answer[step] = np.bincount(clusters * len(starts) + period_of_row,
                                       minlength=n_clusters * len(starts)).reshape(n_clusters, len(starts))
        return answer

    def file_path(self, kind: str, number: int = 0) -> Path | None:
        """The checked path of an atlas (kind "atlas", its number) or of the overview; None if none."""
        if kind == "atlas":
            atlases = (self.manifest.get("atlases") or {}).get("files") or []
            if not 0 <= number < len(atlases):
                return None
            return check_file(self.index_dir, atlases[number], f"atlas {number}")
        record = self.manifest.get("overview")
        return None if record is None else check_file(self.index_dir, record, "overview")


def map_signature(index_dir: Path) -> tuple[int, int, int] | None:
    """What changes when a build replaces map.json (inode, mtime, size); None when there is none."""
    try:
        stat = os.stat(index_dir / MAP_MANIFEST)
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def open_map(index_dir: str | os.PathLike, years: np.ndarray) -> CollectionMap | None:
    """The complete map of `index_dir` for a store whose rows have `years` (the store may have grown
    since: the map covers its first rows); None when no map was made. MapDamaged when a file is missing
    or changed, or the map holds more rows than the store."""
    index_dir = Path(index_dir)
    signature = map_signature(index_dir)
    manifest = read_map_manifest(index_dir)
    if manifest is None or signature is None:
        return None
    if not manifest.get("layout"):
        return None  # only pending work: the first build has not finished
    layout = load_array(index_dir, manifest["layout"], "layout")
    clusters = load_array(index_dir, (manifest.get("clusters") or {}).get("labels"), "clusters")
    count = int(manifest.get("count", -1))
    if layout.shape != (count, 2) or clusters.shape != (count,) or count > len(years):
        raise MapDamaged(f"{index_dir / MAP_MANIFEST}: the map's files do not hold its {count} rows of this "
                         f"store ({len(years)} rows); {REMAKE}")
    x, y = scaled_coordinates(layout)
    mapped_years = np.asarray(years[:count], dtype=np.int64)
    int16_years = np.where((mapped_years > NO_YEAR) & (mapped_years <= 32767), mapped_years, NO_YEAR)
    return CollectionMap(index_dir, manifest, x, y, clusters.astype(np.uint16),
                         int16_years.astype(np.int16), signature)
