"""Recall@10 and latency of the indices on a real collection (default: the emoji demo).

    python bench/demo_recall.py [--vector-dir data/demo/vectors] [--index-dir data/demo/indices-eucl]
                                [--queries 300] [--n 10]

bench/index_scale.py measures at full scale on synthetic vectors; this measures what a researcher gets
on real Inception vectors: for sampled urns, `query` for the whole collection and for every step the
index dir was built with, against exact float64 brute force over the same rows (the query itself
excluded), in the index directory's descriptor space (the saved transform applied here to the stored
vectors). A returned neighbour tied with the true n-th counts as found. Euclidean indices only. An index
directory not built yet is built with the defaults (--descriptor and --index-dimensions override them).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from annoy_indexer import AnnoyIndexer, SearchSettings, read_manifest  # noqa: E402
from siamese.index_dir import read_transform  # noqa: E402
from siamese.vector_store import VectorStore  # noqa: E402


def exact_neighbours(vectors: np.ndarray, rows: np.ndarray, query_row: int, n: int) -> np.ndarray:
    """Distances of the true n nearest rows (float64, query excluded), nearest first."""
    rows = rows[rows != query_row]
    difference = vectors[rows].astype(np.float64) - vectors[query_row].astype(np.float64)
    return np.sort(np.sqrt((difference ** 2).sum(axis=1)))[:n]


def recall(found: list[dict], true_distances: np.ndarray, tolerance: float = 1e-5) -> tuple[int, int]:
    """(hits, wanted): returned neighbours within the true n-th distance."""
    if not len(true_distances):
        return 0, 0
    limit = true_distances[-1] * (1 + tolerance)
    return sum(1 for neighbour in found[:len(true_distances)] if neighbour["distance"] <= limit), \
        len(true_distances)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vector-dir", type=Path, default=ROOT / "data" / "demo" / "vectors")
    parser.add_argument("--index-dir", type=Path, default=ROOT / "data" / "demo" / "indices-eucl")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--descriptor", default=None, help="for a new index dir (default: annoy_indexer's)")
    parser.add_argument("--index-dimensions", type=int, default=None, help="for a new index dir")
    parser.add_argument("--candidate-multiplier", type=float, default=None,
                        help="SearchSettings.candidate_multiplier (default: the search core's)")
    args = parser.parse_args()

    store = VectorStore(args.vector_dir)
    manifest = read_manifest(args.index_dir) or {}
    if manifest.get("metric", "euclidean") != "euclidean":
        raise SystemExit("demo_recall.py: only euclidean indices are compared with brute force")
    settings = SearchSettings() if args.candidate_multiplier is None else \
        SearchSettings(candidate_multiplier=args.candidate_multiplier)
    indexer = AnnoyIndexer(args.vector_dir, args.index_dir, verbose=False, descriptor=args.descriptor,
                           index_dimensions=args.index_dimensions, search_settings=settings)
    if not manifest:
        indexer.build()
    manifest = read_manifest(args.index_dir)
    steps = list(indexer.step_sizes)
    vectors = read_transform(args.index_dir, manifest.get("transform")).apply(np.asarray(store.vectors))
    years = store.years()
    urns = store.urns
    rng = np.random.default_rng(args.seed)
    sample = rng.choice(len(store), size=min(args.queries, len(store)), replace=False)
    indexer.query(urns[sample[0]], n=args.n)  # load the indices before timing

    print(f"{args.vector_dir}: {len(store)} items, model {store.model}; {len(sample)} queries, n={args.n}; "
          f"descriptor {manifest.get('descriptor', 'raw')} {vectors.shape[1]}-d, index_dimensions "
          f"{manifest['index_dimensions']}")
    print(f"{'query':<22}{'recall@' + str(args.n):>10}{'p50 ms':>9}{'p99 ms':>9}")
    for step in [None, *steps]:
        hits = wanted = 0
        times = []
        for row in sample:
            started = time.perf_counter()
            result = indexer.query(urns[row], n=args.n, step=step)
            times.append((time.perf_counter() - started) * 1000)
            if step is None:
                h, w = recall(result, exact_neighbours(vectors, np.arange(len(store)), row, args.n))
                hits, wanted = hits + h, wanted + w
                continue
            for period in result:
                rows = np.flatnonzero((years >= period["start"]) & (years <= period["end"]))
                h, w = recall(period["neighbours"], exact_neighbours(vectors, rows, row, args.n))
                hits, wanted = hits + h, wanted + w
        times.sort()
        p99 = times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))]
        name = "whole collection" if step is None else f"step {step}"
        print(f"{name:<22}{hits / wanted:>10.4f}{statistics.median(times):>9.2f}{p99:>9.2f}")


if __name__ == "__main__":
    main()
