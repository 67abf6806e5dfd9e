"""Qdrant as the index backend, for collections beyond one machine: loading it, and asking it for the
candidates of every period of a query in one call.

Why it looks like this:

* One Qdrant collection holds every stored row's descriptor (the whitened descriptors that Annoy's
  backend projects; siamese/descriptors.py), its point id the store row, with integer payload fields
  `row`, `year` (the period of step 1) and `period_<S>` (the first year of its period of step S, e.g.
  `period_10` = 1950 for 1953). Their payload indices are created before the bulk load, as Qdrant
  advises: a filtered search then plans by the filter's cardinality instead of scanning.
* A query is one `query_batch_points` call holding one filtered query per period asked for, and one
  for the whole collection. Not the group API: it does not guarantee a group for every period, and the
  thin years are the ones a researcher asks about. Every query also keeps `row` below the store's count
  as the reader opened it, so a collection being extended for a newer state of the store never answers
  rows its reader does not know.
* Qdrant only chooses candidates: the search core re-ranks them with exact distances from the index
  directory's descriptors, as it does Annoy's, so both backends report the same distances.
* The store only grows and a row's descriptor never changes under one transform, so a new state of the
  store only appends points; a new transform (or --force) loads a new collection under a new name, and
  the one the manifest no longer names is deleted once the new one is promoted.
* `--qdrant-path DIR` is qdrant-client's local mode: the same client calls, an exact brute-force search
  in Python, one process per folder (it locks it). For tests and small collections; a server
  (`--qdrant-url`) is what scales (docs/scale-out.md).

qdrant-client is imported only here, and only when a Qdrant backend is used: `pip install .[qdrant]`.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import re
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from siamese.periods import Period

ROW, YEAR = "row", "year"
LOAD_BATCH = 1_024  # points per upsert: large enough to amortise a request, small enough to resume
# HNSW's ef for each query (SearchSettings.hnsw_ef), at least twice the candidates asked for: the
# server's default (ef_construct, 100) is tuned for top-10 answers; re-ranking wants the true ones inside
DEFAULT_HNSW_EF = 256
API_KEY_VARIABLE = "QDRANT_API_KEY"  # read from the environment, never written to the manifest
DISTANCES = {"euclidean": "Euclid", "angular": "Cosine", "dot": "Dot", "manhattan": "Manhattan"}
NAME = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
INSTALL = 'the Qdrant backend needs qdrant-client: pip install ".[qdrant]" (or pip install qdrant-client)'


class QdrantUnavailable(ValueError):
    """qdrant-client is not installed, or the Qdrant server cannot be reached; the message says which."""


def period_field(step: int) -> str:
    """The payload field holding a row's period of `step` years: "year" for 1, else "period_<step>"."""
    return YEAR if step == 1 else f"period_{step}"


def _client_module() -> Any:
    try:
        import qdrant_client
    except ImportError:
        raise QdrantUnavailable(INSTALL) from None
    return qdrant_client


@dataclass(frozen=True)
class QdrantLocation:
    """Where a Qdrant backend lives: a server's `url` or a local-mode `path` (one of them), and the
    prefix of its collections' names (None: one derived from the index directory, so that two index
    directories never share one). `shards` and `replicas`: a new collection's shard_number and
    replication_factor on a cluster (None: the server's defaults; docs/scale-out.md)."""

    url: str | None = None
    path: str | None = None
    collection: str | None = None
    shards: int | None = None
    replicas: int | None = None

    def __post_init__(self) -> None:
        if (self.url is None) == (self.path is None):
            raise ValueError("a Qdrant backend needs either a server's URL (--qdrant-url) or a local "
                             "folder (--qdrant-path), not both")
        if self.path is not None:
            object.__setattr__(self, "path", str(Path(self.path).resolve()))
        for name in ("shards", "replicas"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"--qdrant-{name} must be a positive whole number, got {value!r}")
        if self.collection is not None and not NAME.match(self.collection):
            raise ValueError(f"--qdrant-collection must be 1-100 letters, digits, '-' or '_', got "
                             f"{self.collection!r}")

    @classmethod
    def from_record(cls, record: dict) -> QdrantLocation:
        return cls(record.get("url"), record.get("path"), record.get("prefix"), record.get("shards"),
                   record.get("replicas"))

    def same_place(self, other: QdrantLocation | None, index_dir: Path) -> bool:
        """Whether `other` names the same server or folder and collection prefix as this one."""
        return other is not None and (self.url, self.path, self.prefix_for(index_dir)) == (
            other.url, other.path, other.prefix_for(index_dir))

    def describe(self) -> str:
        return self.url if self.url is not None else f"local folder {self.path}"

    def prefix_for(self, index_dir: Path) -> str:
        if self.collection is not None:
            return self.collection
        digest = hashlib.sha1(str(index_dir.resolve()).encode()).hexdigest()[:8]
        return f"siamese-{re.sub(r'[^A-Za-z0-9_-]', '', index_dir.resolve().name)[:40]}-{digest}"


_local_clients: dict[str, Any] = {}  # local mode locks its folder: one client per folder per process
_local_lock = threading.Lock()


@atexit.register
def _close_local_clients() -> None:
    """Close local-mode clients while the interpreter can still run their close() (their __del__ at
    shutdown prints an ImportError) and release their folders' locks."""
    with _local_lock:
        for client in _local_clients.values():
            client.close()
        _local_clients.clear()


def connect(location: QdrantLocation) -> Any:
    """A QdrantClient for `location`; QdrantUnavailable when the package or the server is missing."""
    qdrant_client = _client_module()
    if location.path is not None:
        with _local_lock:
            client = _local_clients.get(location.path)
            if client is None:
                Path(location.path).mkdir(parents=True, exist_ok=True)
                try:
                    client = qdrant_client.QdrantClient(path=location.path)
                except RuntimeError as error:  # "already accessed by another instance of Qdrant client"
                    raise QdrantUnavailable(f"Qdrant's local folder {location.path} is in use by another "
                                            f"process ({error}); local mode serves one process: use a "
                                            "Qdrant server (--qdrant-url) for several") from None
                _local_clients[location.path] = client
            return client
    client = qdrant_client.QdrantClient(url=location.url, api_key=os.environ.get(API_KEY_VARIABLE),
                                        timeout=60)
    try:
        client.get_collections()
    except Exception as error:  # noqa: BLE001 - httpx/grpc/… errors: all mean "not reachable"
        raise QdrantUnavailable(f"cannot reach the Qdrant server at {location.url}: "
                                f"{type(error).__name__}: {error}") from None
    return client


def _models() -> Any:
    return _client_module().models


def _quietly(call: Callable[[], Any]) -> Any:
    """Local mode warns that payload indices and search parameters have no effect there; they are the
    calls a server gets, so they are made anyway."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(no effect|local Qdrant|Local mode).*")
        return call()


def _create_collection(client: Any, name: str, dimensions: int, metric: str, fields: Sequence[str],
                       location: QdrantLocation) -> None:
    models = _models()
    client.create_collection(name, vectors_config=models.VectorParams(
        size=dimensions, distance=getattr(models.Distance, DISTANCES[metric].upper())),
        shard_number=location.shards, replication_factor=location.replicas)
    for field in fields:
        _index_field(client, name, field)


def _index_field(client: Any, name: str, field: str) -> None:
    models = _models()
    schema = models.IntegerIndexParams(type=models.IntegerIndexType.INTEGER, lookup=True, range=True)
    _quietly(lambda: client.create_payload_index(name, field, field_schema=schema, wait=True))


def load_collection(client: Any, location: QdrantLocation, index_dir: Path, record: dict | None,
                    descriptors: np.ndarray, years: np.ndarray, step_sizes: Sequence[int], metric: str,
                    basis: str, save: Callable[[dict], None], progress: Callable[[int], None] | None = None
                    ) -> dict:
    """Load the rows the collection lacks (all of them for a new one); returns its manifest record.

    `record`: the collection already loaded or being loaded (resumed: its `loaded` rows are skipped),
    used when its `basis` (the transform, metric and dimensions its descriptors came from) and location
    match; else a new collection. `save(record)` is called before anything is written to a new
    collection and then about once a second, so that an interrupted load resumes and a collection
    never exists that no manifest names (garbage collection could not find it). `progress(n)`: the rows
    loaded so far."""
    where = {"url": location.url, "path": location.path, "prefix": location.prefix_for(index_dir)}
    sharding = {"shards": location.shards, "replicas": location.replicas}
    fields = [ROW, *dict.fromkeys(period_field(step) for step in (1, *step_sizes))]
    dimensions = int(descriptors.shape[1])
    if record is None or record.get("basis") != basis or any(record.get(key) != value
                                                             for key, value in where.items()):
        record = {**where, **sharding, "collection": f"{where['prefix']}-{uuid.uuid4().hex[:12]}",
                  "basis": basis, "metric": metric, "dimensions": dimensions, "loaded": 0, "points": 0,
                  "fields": [ROW, YEAR]}
        save(record)
    record = dict(record)
    name = record["collection"]
    if not client.collection_exists(name):
        _create_collection(client, name, dimensions, metric, record["fields"], location)
        record["loaded"] = record["points"] = 0
    for field in fields:  # a step size new to this collection: its field on every row loaded so far
        if field in record["fields"]:
            continue
        _index_field(client, name, field)
        _set_period_field(client, name, field, years[:record["loaded"]])
        record["fields"] = [*record["fields"], field]
        save(record)
    models = _models()
    saved = time.perf_counter()
    for start in range(record["loaded"], len(years), LOAD_BATCH):
        rows = np.arange(start, min(start + LOAD_BATCH, len(years)))
        vectors = np.asarray(descriptors[start:rows[-1] + 1], dtype=np.float32)
        finite = np.isfinite(vectors).all(axis=1)  # an unusable row is nobody's candidate
        payloads = [_payload(int(row), int(years[row]), record["fields"]) for row in rows[finite]]
        if finite.any():
            batch = models.Batch(ids=rows[finite].tolist(), vectors=vectors[finite].tolist(),
                                 payloads=payloads)
            client.upsert(name, points=batch, wait=True)
        record["loaded"] = int(rows[-1]) + 1
        if progress is not None:
            progress(record["loaded"])
        if time.perf_counter() - saved >= 1.0:
            save(record)
            saved = time.perf_counter()
    record["points"] = int(client.count(name, exact=True).count)  # what a reader checks is still there
    save(record)
    return record


def _payload(row: int, year: int, fields: Sequence[str]) -> dict:
    payload = {ROW: row}
    for field in fields:
        if field == YEAR:
            payload[YEAR] = year
        elif field.startswith("period_"):
            step = int(field.split("_", 1)[1])
            payload[field] = year - year % step
    return payload


def _set_period_field(client: Any, name: str, field: str, years: np.ndarray) -> None:
    """Write a new step size's field on the rows loaded, one call per period (a filter on `year`)."""
    if not len(years):
        return
    models = _models()
    step = 1 if field == YEAR else int(field.split("_", 1)[1])
    for start in np.unique(years - years % step).tolist():
        client.set_payload(name, payload={field: int(start)}, wait=True, points=models.Filter(must=[
            models.FieldCondition(key=YEAR, range=models.Range(gte=start, lte=start + step - 1))]))


def drop_collections(location: QdrantLocation, index_dir: Path, keep: set[str]) -> None:
    """Delete this index directory's collections (by their prefix) that the manifest no longer names."""
    client = connect(location)
    prefix = location.prefix_for(index_dir) + "-"
    for collection in client.get_collections().collections:
        if collection.name.startswith(prefix) and collection.name not in keep \
                and re.fullmatch(r"[0-9a-f]{12}", collection.name[len(prefix):]):
            client.delete_collection(collection.name)


class QdrantCandidates:
    """The candidates of a query's periods from a loaded collection, in one call.

    `count`: the store rows the reader knows; rows appended since are never answered."""

    def __init__(self, record: dict, count: int, hnsw_ef: int = DEFAULT_HNSW_EF) -> None:
        self.location = QdrantLocation.from_record(record)
        self.collection: str = record["collection"]
        self.fields: list[str] = list(record["fields"])
        self.count = count
        self.hnsw_ef = hnsw_ef
        self.client = connect(self.location)
        try:
            info = self.client.get_collection(self.collection)
        except Exception as error:  # noqa: BLE001 - "not found" is an HTTP or gRPC error, or a ValueError
            raise FileNotFoundError(f"the Qdrant collection {self.collection} is missing at "
                                    f"{self.location.describe()} ({type(error).__name__})") from None
        if (info.points_count or 0) < record.get("points", 0):
            raise FileNotFoundError(f"the Qdrant collection {self.collection} at {self.location.describe()} "
                                    f"holds {info.points_count} points, the index directory loaded "
                                    f"{record.get('points')}")

    def candidates(self, vector: np.ndarray, requests: Sequence[tuple[Period | None, int, int]]
                   ) -> list[np.ndarray]:
        """The store rows nearest to `vector` for each (period, step, limit); period None: the whole
        collection. One request to Qdrant holds them all."""
        models = _models()
        below = models.FieldCondition(key=ROW, range=models.Range(lt=self.count))
        query = np.asarray(vector, dtype=np.float32).tolist()
        batch = []
        for period, step, limit in requests:
            must = [below]
            if period is not None:
                field = period_field(step)
                if field not in self.fields:
                    raise ValueError(f"the Qdrant collection {self.collection} has no field {field} "
                                     f"(step {step}); build the index directory with --steps {step}")
                must.append(models.FieldCondition(key=field, match=models.MatchValue(value=period.start)))
            batch.append(models.QueryRequest(query=query, filter=models.Filter(must=must), limit=limit,
                                             params=models.SearchParams(hnsw_ef=max(self.hnsw_ef, 2 * limit)),
                                             with_payload=False, with_vector=False))
        if not batch:
            return []
        try:
            responses = _quietly(lambda: self.client.query_batch_points(self.collection, requests=batch))
        except Exception as error:  # noqa: BLE001 - a server down, a timeout, …: the web app answers 503
            raise QdrantUnavailable(f"the index server (Qdrant at {self.location.describe()}) did not "
                                    f"answer: {type(error).__name__}: {error}") from None
        return [np.fromiter((point.id for point in response.points), dtype=np.int64)
                for response in responses]
