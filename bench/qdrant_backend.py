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


def build(store_dir: Path, index_dir: Path, **backend: object) -> float:
    started = time.perf_counter()
    AnnoyIndexer(store_dir, index_dir, step_sizes=[10, 1], verbose=True, **backend).build()
    return time.perf_counter() - started


def measure(store_dir: Path, index_dir: Path, queries: np.ndarray, truth: dict, urns: list[str]) -> dict:
    """Recall per key and per year, and the latency of one search of all three keys, for one backend."""
    collection = Collection(store_dir, index_dir)
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
        for name, index_dir in (("annoy", work / "annoy"), ("qdrant", work / "qdrant-index")):
            truth = ground_truth(store_dir, index_dir, queries)
            results[name] = measure(store_dir, index_dir, queries, truth, urns)
        engine = args.qdrant_url or f"qdrant-client local mode ({location['qdrant_path']})"
        print(f"\n{len(store):,} x {store.n_dimensions}, {args.queries} queries, each one search of the "
              f"whole collection + 5 decades + 50 years (n=10); Qdrant: {engine}\n")
        print("| backend | build s | recall@10 all | step 10 | step 1 | worst year | search p50 ms |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name, result in results.items():
            year, worst = result["worst_year"]
            print(f"| {name} | {seconds[name]:.1f} | {result['recall_all']:.4f} | "
                  f"{result['recall_10']:.4f} | {result['recall_1']:.4f} | {year}: {worst:.3f} | "
                  f"{result['p50_ms']:.1f} |")
        print(f"\nratios qdrant/annoy: build {seconds['qdrant'] / seconds['annoy']:.2f}x, search p50 "
              f"{results['qdrant']['p50_ms'] / results['annoy']['p50_ms']:.1f}x")
    finally:
        if args.keep or args.work_dir:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
