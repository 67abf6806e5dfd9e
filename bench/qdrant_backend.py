"""The Qdrant backend against the Annoy backend: recall@10 per period and latency, on the same store.

    python bench/qdrant_backend.py [--n-items 100000] [--dim 2048] [--queries 5] [--work-dir DIR] [--keep]
                                   [--qdrant-url URL | --qdrant-path DIR]

Writes bench/index_scale.py's synthetic collection (power-law spectrum, clusters spread over 1945-1994,
5 % near-duplicates; default 100,000 x 2048), builds both backends over it (annoy_indexer.py's defaults:
whitened 256-d descriptors; Annoy: 128-d projection, trees and int8 codes; Qdrant: the descriptors, with
payload fields row / year / period_10) and, for --queries sampled items, searches the whole collection
and every period of steps 10 and 1 in one search each (what the page asks), and reports:

  build     wall time of each backend's build (for Qdrant most of it is loading the points)
  recall@10 against exact brute force (float64) in each index directory's descriptor space, for the
            whole collection, each step, and the worst single year (rare years are where a filtered ANN
            search can fail)
  latency   p50 of the search (the web app's Collection.neighbours), and the Qdrant/Annoy ratio

Without --qdrant-url it uses qdrant-client's local mode (--qdrant-path, default in the work dir): the same
client calls a server gets, but an exact brute-force search in Python, so its recall is the re-ranking's
and its latency is not a server's (it evaluates each period's filter point by point: about a second per
period at 100,000 points). A server's latency needs a server (docs/scale-out.md).

With --engine (needs `pip install qdrant-edge-py`: Qdrant's own Rust engine, segments, HNSW and payload
indices, run in-process) a third row answers through the same search core with the candidates from
that engine instead: the same filtered batch per search, HNSW (m 16, ef_construct 100, the server's
defaults) built over the same descriptors and payload fields. It is what a server's engine does, less
the network and the server's own threads; not a server.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from index_scale import FIRST_YEAR, LAST_YEAR, generate, ground_truth, recall  # noqa: E402

from annoy_indexer import AnnoyIndexer  # noqa: E402
from siamese.collection import Collection  # noqa: E402
from siamese.vector_store import VectorStore  # noqa: E402

KEYS = ["all", "10", "1"]


class EngineCandidates:
    """QdrantCandidates' one method, answered by Qdrant's engine in-process (qdrant-edge): the same
    filtered queries, one batch per search."""

    def __init__(self, descriptors: np.ndarray, years: np.ndarray, steps: list[int], count: int,
                 path: Path, hnsw_ef: int) -> None:
        import qdrant_edge as engine

        from siamese.qdrant_index import LOAD_BATCH, ROW, period_field
        self.engine, self.count, self.period_field, self.row = engine, count, period_field, ROW
        self.hnsw_ef = hnsw_ef
        config = engine.EdgeConfig(
            vectors=engine.EdgeVectorParams(size=descriptors.shape[1], distance=engine.Distance.Euclid),
            hnsw_config=engine.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10_000))
        self.shard = engine.EdgeShard.create(str(path), config)
        fields = [ROW, *dict.fromkeys(period_field(step) for step in (1, *steps))]
        for field in fields:  # before the bulk load, as for a server
            integer = engine.PayloadSchemaType.Integer
            self.shard.update(engine.UpdateOperation.create_field_index(field, integer))
        started = time.perf_counter()
        for start in range(0, len(years), LOAD_BATCH):
            rows = range(start, min(start + LOAD_BATCH, len(years)))
            vectors = np.asarray(descriptors[start:rows[-1] + 1], dtype=np.float32).tolist()
            points = []
            for row, vector in zip(rows, vectors, strict=True):
                year = int(years[row])
                payload = {ROW: row, **{period_field(step): year - year % step for step in (1, *steps)}}
                points.append(engine.Point(row, vector, payload))
            self.shard.update(engine.UpdateOperation.upsert_points(points))
        self.load_seconds = time.perf_counter() - started
        started = time.perf_counter()
        self.shard.optimize()  # builds the HNSW graph, as a server's optimizer does after a bulk load
        self.index_seconds = time.perf_counter() - started

    def candidates(self, vector: np.ndarray, requests: list) -> list[np.ndarray]:
        engine = self.engine
        below = engine.FieldCondition(key=self.row, range=engine.RangeFloat(lt=self.count))
        query = engine.Query.Nearest(np.asarray(vector, dtype=np.float32).tolist())
        batch = []
        for period, step, limit in requests:
            must = [below]
            if period is not None:
                must.append(engine.FieldCondition(key=self.period_field(step),
                                                  match=engine.MatchValue(period.start)))
            params = engine.SearchParams(hnsw_ef=max(self.hnsw_ef, 2 * limit))
            batch.append(engine.QueryRequest(limit=limit, query=query, filter=engine.Filter(must=must),
                                             params=params))
        answers = self.shard.query_batch(engine.QueryBatchRequest(batch))
        return [np.fromiter((point.id for point in points), dtype=np.int64) for points in answers]


def build(store_dir: Path, index_dir: Path, **backend: object) -> float:
    started = time.perf_counter()
    AnnoyIndexer(store_dir, index_dir, step_sizes=[10, 1], verbose=True, **backend).build()
    return time.perf_counter() - started


def with_engine(collection: Collection, folder: Path) -> Collection:
    """The Qdrant backend's collection, its candidates from Qdrant's engine in-process (built in
    `folder`) instead of qdrant-client."""
    core = collection.core
    core.qdrant = EngineCandidates(core.vectors, core.store.years(), core.step_sizes, core.store.count,
                                   folder, core.settings.hnsw_ef)
    return collection


def measure(collection: Collection, queries: np.ndarray, truth: dict, urns: list[str]) -> dict:
    """Recall per key and per year, and the latency of one search of all three keys, for one backend."""
    years = list(range(FIRST_YEAR, LAST_YEAR + 1))
    collection.neighbours(urns[int(queries[0])], nns=10, steps=[None, 10, 1])  # warm-up
    found: dict[str, list] = {key: [] for key in KEYS}
    times = []
    for row in queries:
        started = time.perf_counter()
        answer = collection.neighbours(urns[int(row)], nns=10, steps=[None, 10, 1])
        times.append(time.perf_counter() - started)
        for key in KEYS:
            found[key].append([period["neighbours"] for period in answer["steps"][key]])
    result = {"p50_ms": statistics.median(times) * 1e3,
              **{f"recall_{key}": recall(found[key], truth[key], urns) for key in KEYS}}
    per_year = [recall([[periods[index]] for periods in found["1"]],
                       [[periods[index]] for periods in truth["1"]], urns) for index in range(len(years))]
    worst = int(np.argmin(per_year))
    result["worst_year"] = (years[worst], per_year[worst])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--queries", type=int, default=5, help="sampled items (local mode: ~1 min each)")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a new directory under /tmp")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--engine", action="store_true",
                        help="also Qdrant's engine in-process (pip install qdrant-edge-py)")
    parser.add_argument("--hnsw-ef", type=int, nargs="+", default=[256], metavar="EF",
                        help="the engine's searches with each HNSW ef (SearchSettings.hnsw_ef; default 256)")
    parser.add_argument("--skip-local", action="store_true",
                        help="not the local mode's searches (slow: ~1 min a query at 100,000)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--qdrant-url", help="a Qdrant server (default: qdrant-client's local mode)")
    where.add_argument("--qdrant-path", type=Path, help="local mode's folder (default: WORK_DIR/qdrant)")
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="qdrant-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    store_dir = work / "vectors"
    try:
        if not (store_dir / "store.json").exists():
            started = time.perf_counter()
            generate(store_dir, args.n_items, args.dim, alpha=1.0, cluster_size=50, spread=0.5,
                     duplicates=0.05)
            print(f"store: {args.n_items:,} x {args.dim} in {time.perf_counter() - started:.0f} s",
                  flush=True)
        location = {"qdrant_url": args.qdrant_url} if args.qdrant_url else \
            {"qdrant_path": args.qdrant_path or work / "qdrant"}
        seconds = {"annoy": build(store_dir, work / "annoy"),
                   "qdrant": build(store_dir, work / "qdrant-index", **location)}
        store = VectorStore(store_dir)
        urns = [item["urn"] for item in store.items]
        queries = np.random.default_rng(1).choice(len(store), args.queries, replace=False)
        results = {}
        truth = {name: ground_truth(store_dir, work / name, queries) for name in ("annoy", "qdrant-index")}
        results["annoy"] = measure(Collection(store_dir, work / "annoy"), queries, truth["annoy"], urns)
        if not args.skip_local:
            results["qdrant"] = measure(Collection(store_dir, work / "qdrant-index"), queries,
                                        truth["qdrant-index"], urns)
        engine_build = None
        if args.engine:
            shutil.rmtree(work / "engine", ignore_errors=True)
            collection = with_engine(Collection(store_dir, work / "qdrant-index"), work / "engine")
            engine_build = (collection.core.qdrant.load_seconds, collection.core.qdrant.index_seconds)
            for ef in args.hnsw_ef:
                collection.core.qdrant.hnsw_ef = ef
                results[f"qdrant engine, ef {ef}"] = measure(collection, queries, truth["qdrant-index"], urns)
        where = args.qdrant_url or f"qdrant-client local mode ({location['qdrant_path']})"
        print(f"\n{len(store):,} x {store.n_dimensions}, {args.queries} queries, each one search of the "
              f"whole collection + 5 decades + 50 years (n=10); Qdrant: {where}\n")
        print("| backend | recall@10 all | step 10 | step 1 | worst year | search p50 ms | / annoy |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name, result in results.items():
            year, worst = result["worst_year"]
            print(f"| {name} | {result['recall_all']:.4f} | {result['recall_10']:.4f} | "
                  f"{result['recall_1']:.4f} | {year}: {worst:.3f} | {result['p50_ms']:.1f} | "
                  f"{result['p50_ms'] / results['annoy']['p50_ms']:.2f}x |")
        print(f"\nbuild: annoy {seconds['annoy']:.1f} s, qdrant ({where}) {seconds['qdrant']:.1f} s "
              f"({seconds['qdrant'] / seconds['annoy']:.2f}x; a build that found everything current: "
              "seconds)")
        if engine_build:
            print(f"qdrant engine: load {engine_build[0]:.1f} s + HNSW {engine_build[1]:.1f} s")
    finally:
        if args.keep or args.work_dir:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
