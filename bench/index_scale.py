"""Annoy indices at collection scale: build time, size on disk, memory, query latency and recall.

    python bench/index_scale.py [--n-items 426777] [--dim 2048] [--work-dir DIR] [--keep]
                                [--queries 200] [--sweep 500 1000 2000 4000]

Writes a real vector store of synthetic vectors (default 426,777 x 2048, the size of the target
collection; 3.5 GB) spread over the 50 years 1945-1994, builds the indices of annoy_indexer.py for
steps [10, 1] and measures, each phase in a fresh process so that its peak RSS is its own:

  build      wall time of the whole build, split into the PCA projection, the whole-collection index and
             the indices of each step; index size on disk; peak RSS
  query      latency p50/p99 of query(urn, n=10, step=1) (50 periods; also the search core alone, and
             with the scan in 2 threads), step=10 (6 decades), query_all
             (both steps) and the whole-collection query, after a warm-up; peak RSS of a serving process
  recall@10  against exact brute force (float64) over the same periods, on --queries sampled items;
             with --sweep, recall and step-1 latency for each given search_k instead of the default

The synthetic vectors are meant to be as hard as real image features, not easier: a power-law variance
spectrum (lambda_i ~ i^-alpha over all dimensions, randomly rotated, so a 64-d PCA keeps only part of
the variance), clusters of ~50 images whose years spread around the cluster's year (sigma 5 years, so
most periods hold no image of the query's cluster and their neighbours are only loosely similar), and
5 % near-duplicates. The table reports the data's local intrinsic dimensionality (LID, MLE at k=10) and
relative contrast (mean distance / 10th-neighbour distance) so the difficulty can be compared with real
vectors. Times are medians/percentiles of single queries on a warm page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from annoy_indexer import AnnoyIndexer, SearchSettings, read_manifest  # noqa: E402
from siamese.index_dir import read_transform  # noqa: E402
from siamese.vector_store import VectorStore, VectorStoreWriter  # noqa: E402

FIRST_YEAR, LAST_YEAR = 1945, 1994
STEPS = [10, 1]
BATCH = 16_384


def memory_mib() -> dict[str, float]:
    """Peak RSS of this process (VmHWM: unlike ru_maxrss it is not inherited from the parent across exec)
    and its current split into anonymous memory and mapped file pages (the store, the indices)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        return {name: int(fields[key].split()[0]) / 1024
                for name, key in (("peak", "VmHWM"), ("anon", "RssAnon"), ("file", "RssFile"))}
    except (OSError, KeyError, ValueError):  # not Linux
        return {"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "anon": 0.0, "file": 0.0}


def generate(store_dir: Path, n_items: int, dim: int, alpha: float, cluster_size: int, spread: float,
             duplicates: float, seed: int = 0, model: str = "synthetic-power-law") -> None:
    """Write the synthetic collection into a real vector store, batch by batch."""
    rng = np.random.default_rng(seed)
    scale = (np.arange(1, dim + 1, dtype=np.float64) ** (-alpha / 2)).astype(np.float32)
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)).astype(np.float32))
    n_clusters = max(1, n_items // cluster_size)
    centres = (rng.standard_normal((n_clusters, dim), dtype=np.float32) * scale) @ rotation
    cluster_years = rng.integers(FIRST_YEAR, LAST_YEAR + 1, n_clusters)
    with VectorStoreWriter(store_dir, model, dim) as writer:
        for start in range(0, n_items, BATCH):
            count = min(BATCH, n_items - start)
            clusters = rng.integers(0, n_clusters, count)
            offsets = (rng.standard_normal((count, dim), dtype=np.float32) * (spread * scale)) @ rotation
            vectors = centres[clusters] + offsets
            copies = np.flatnonzero(rng.random(count) < duplicates)[1:]
            originals = rng.integers(0, copies, len(copies)) if len(copies) else copies
            noise = rng.standard_normal((len(copies), dim), dtype=np.float32) * (0.02 * spread * scale[0])
            vectors[copies] = vectors[originals] + noise
            clusters[copies] = clusters[originals]
            years = np.clip(np.rint(cluster_years[clusters] + rng.normal(0, 5, count)), FIRST_YEAR, LAST_YEAR)
            items = [{"urn": f"urn:synthetic:{start + i:07d}", "date": f"{int(year)}-06-01",
                      "year": int(year), "path": f"synthetic/{start + i:07d}.jpg",
                      "metadata": {"title": f"image {start + i}"}}
                     for i, year in enumerate(years)]
            writer.append(vectors, items)


def ground_truth(store_dir: Path, index_dir: Path, queries: np.ndarray, k: int = 10) -> dict:
    """Exact top-k rows per query for the whole collection and every period of every step (float64),
    in the index directory's descriptor space (its saved transform applied here to the stored vectors)."""
    store = VectorStore(store_dir)
    transform = read_transform(index_dir, (read_manifest(index_dir) or {}).get("transform"))
    vectors = store.vectors if transform.is_identity else np.concatenate(
        [transform.apply(store.vectors[start:start + BATCH]) for start in range(0, len(store), BATCH)])
    years = store.years()
    query_vectors = np.asarray(vectors[queries], dtype=np.float32)
    distances = np.empty((len(queries), len(store)), dtype=np.float32)
    query_norms = (query_vectors.astype(np.float64) ** 2).sum(axis=1)
    for start in range(0, len(store), BATCH):
        chunk = np.asarray(vectors[start:start + BATCH])
        squared = ((chunk.astype(np.float64) ** 2).sum(axis=1)[None, :] + query_norms[:, None]
                   - 2 * (query_vectors @ chunk.T).astype(np.float64))
        distances[:, start:start + BATCH] = np.sqrt(np.maximum(squared, 0))
    groups = {"all": [np.arange(len(store))]}
    for step in STEPS:
        starts = years - years % step
        groups[str(step)] = [np.flatnonzero(starts == s) for s in range(FIRST_YEAR - FIRST_YEAR % step,
                                                                             LAST_YEAR + 1, step)]
    truth: dict = {name: [] for name in groups}
    lids, contrasts = [], []
    for q, row in enumerate(queries):
        for name, periods in groups.items():
            per_query = []
            for rows in periods:
                rows = rows[rows != row]
                nearest_first = distances[q, rows]
                take = min(3 * k, len(rows))
                near = rows[np.argpartition(nearest_first, take - 1)[:take]] if take else rows
                # then exact, in float64:
                difference = np.asarray(vectors[near], np.float64) - vectors[row].astype(np.float64)
                exact = np.sqrt((difference ** 2).sum(axis=1))
                order = np.argsort(exact, kind="stable")[:k]
                per_query.append((near[order], exact[order]))
                if name == "all":
                    nearest = exact[order]
                    lids.append(-1 / np.mean(np.log(nearest[:-1] / nearest[-1])))
                    contrasts.append(float(np.mean(distances[q, rows])) / nearest[-1])
            truth[name].append(per_query)
    truth["lid"] = float(np.median(lids))
    truth["contrast"] = float(np.median(contrasts))
    return truth


def recall(found: list[list[dict]], expected: list, urns: list[str], tolerance: float = 1e-5) -> float:
    """Share of the true neighbours found, over (query, period) pairs; a tie with the 10th counts."""
    hits = total = 0
    for periods, truths in zip(found, expected, strict=True):
        for neighbours, (rows, distances) in zip(periods, truths, strict=True):
            if not len(rows):
                continue
            wanted = {urns[row] for row in rows}
            limit = distances[-1] * (1 + tolerance)
            hits += sum(1 for nb in neighbours[:len(rows)] if nb["urn"] in wanted or nb["distance"] <= limit)
            total += len(rows)
    return hits / total if total else 1.0


def percentiles(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered) * 1e3, ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3


def phase_build(args: argparse.Namespace) -> dict:
    indexer = AnnoyIndexer(args.store, args.indices, step_sizes=STEPS, n_trees=args.trees,
                           index_dimensions=args.index_dimensions, verbose=False, descriptor=args.descriptor,
                           descriptor_dimensions=args.descriptor_dimensions)
    report = indexer.build()
    sizes: dict[str, int] = {}
    for path in Path(args.indices).iterdir():
        if path.name.startswith("all."):
            group = "all"
        elif path.name.startswith("step"):
            group = path.name[len("step"):].split("_")[0]  # step10_1950.<fingerprint>.ann -> "10"
        else:
            group = "other"
        sizes[group] = sizes.get(group, 0) + path.stat().st_size
    manifest = json.loads((Path(args.indices) / "index.json").read_text())
    return {"report": report, "sizes": sizes, "memory": memory_mib(), "load": os.getloadavg()[0],
            "variance_kept": manifest["projection"].get("variance_kept"),
            "n_trees": manifest["n_trees"], "index_dimensions": manifest["index_dimensions"],
            "descriptor": f"{manifest['descriptor']} {manifest['descriptor_dimensions']}-d"}


def phase_query(args: argparse.Namespace) -> dict:
    with open(args.truth, "rb") as handle:
        truth, queries = pickle.load(handle)
    indexer = AnnoyIndexer(args.store, args.indices, step_sizes=STEPS, verbose=False)
    store = VectorStore(args.store)
    urns = store.urns
    latency_urns = [urns[row] for row in queries]
    started = time.perf_counter()
    indexer.query(latency_urns[0], n=10)
    first = time.perf_counter() - started
    memory_first = memory_mib()
    # A long-running server has touched the store's pages: map them all once, as it would have, so that
    # latencies are those of its steady state rather than of page faults on a fresh mapping.
    vectors = indexer.collection().core.vectors
    for start in range(0, len(vectors), BATCH):
        float(vectors[start:start + BATCH].sum())
    threaded = AnnoyIndexer(args.store, args.indices, step_sizes=STEPS, verbose=False,
                            search_settings=SearchSettings(threads=2))
    core = indexer.collection().core
    rows_of = {urns[row]: int(row) for row in queries}
    calls = {"step 1 (50 periods)": lambda urn: indexer.query(urn, n=10, step=1),
             "step 1, search core only (rows and distances, no answer dicts)":
                 lambda urn: core.search(core.query_for_row(rows_of[urn]), {"1": 10}),
             "step 1, scan in 2 threads": lambda urn: threaded.query(urn, n=10, step=1),
             "step 10 (6 periods)": lambda urn: indexer.query(urn, n=10, step=10),
             "query_all (steps 10+1)": lambda urn: indexer.query_all(urn, n_nns=10),
             "whole collection": lambda urn: indexer.query(urn, n=10)}
    truth_of = {"step 1 (50 periods)": truth["1"], "step 1, scan in 2 threads": truth["1"],
                "step 10 (6 periods)": truth["10"],
                "whole collection": truth["all"]}
    rows = []
    for name, call in calls.items():
        for urn in latency_urns[:20]:
            call(urn)  # warm-up: page cache and Python caches
        times, results = [], []
        for urn in latency_urns:
            started = time.perf_counter()
            result = call(urn)
            times.append(time.perf_counter() - started)
            results.append(result)
        p50, p99 = percentiles(times)
        found = None
        if name in truth_of:
            found = [[period["neighbours"] for period in result] if name != "whole collection" else [result]
                     for result in results]
        rows.append({"name": name, "p50_ms": p50, "p99_ms": p99,
                     "recall": recall(found, truth_of[name], urns) if found else None})
    sweep = []
    period_size = len(store) // (LAST_YEAR - FIRST_YEAR + 1)
    for search_k in args.sweep or []:
        indexer = AnnoyIndexer(args.store, args.indices, step_sizes=STEPS, verbose=False, search_k=search_k)
        path = "scan" if period_size <= indexer.search_settings.scan_below * search_k else "Annoy trees"
        times, results = [], []
        for urn in latency_urns:
            started = time.perf_counter()
            results.append(indexer.query(urn, n=10, step=1))
            times.append(time.perf_counter() - started)
        p50, p99 = percentiles(times)
        found = [[period["neighbours"] for period in result] for result in results]
        sweep.append({"search_k": search_k, "path": path, "p50_ms": p50, "p99_ms": p99,
                      "recall": recall(found, truth["1"], urns)})
    return {"first_query_s": first, "rows": rows, "sweep": sweep, "memory_first": memory_first,
            "memory": memory_mib(),
            "load": os.getloadavg()[0]}


def run_phase(name: str, args: argparse.Namespace, extra: list[str]) -> dict:
    command = [sys.executable, __file__, "--phase", name, "--store", str(args.store), "--indices",
               str(args.indices), "--truth", str(args.truth), *extra]
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def disk_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-items", type=int, default=426_777)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a new directory under /tmp")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--queries", type=int, default=200, help="sampled items for latency and recall")
    parser.add_argument("--trees", type=int, default=None, help="n_trees (default: annoy_indexer's)")
    parser.add_argument("--index-dimensions", type=int, default=None, help="default: annoy_indexer's")
    parser.add_argument("--descriptor", default=None, help="raw or whitened (default: annoy_indexer's)")
    parser.add_argument("--descriptor-dimensions", type=int, default=None, help="default: annoy_indexer's")
    parser.add_argument("--sweep", type=int, nargs="*", default=None, metavar="SEARCH_K",
                        help="also measure step-1 recall and latency at these search_k values")
    parser.add_argument("--alpha", type=float, default=1.0, help="variance spectrum lambda_i ~ i^-alpha")
    parser.add_argument("--cluster-size", type=int, default=50)
    parser.add_argument("--spread", type=float, default=0.5,
                        help="cluster spread relative to the collection's")
    parser.add_argument("--duplicates", type=float, default=0.05, help="share of near-duplicates")
    parser.add_argument("--model", default="synthetic-power-law",
                        help="the model the store says its vectors are from (default: synthetic-power-law). "
                             "inception-v3-2015 (with --dim 2048) lets a server on the store embed uploads "
                             "(bench/serve_load.py --upload): their cost is real, their answers mean "
                             "nothing, the vectors being synthetic")
    parser.add_argument("--phase", choices=["build", "query"], help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--indices", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--truth", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        result = phase_build(args) if args.phase == "build" else phase_query(args)
        print(json.dumps(result))
        return

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="index-scale-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    args.store, args.indices, args.truth = work / "vectors", work / "indices", work / "truth.pickle"
    try:
        started = time.perf_counter()
        if not (args.store / "store.json").exists():
            generate(args.store, args.n_items, args.dim, args.alpha, args.cluster_size, args.spread,
                     args.duplicates, model=args.model)
        print(f"store: {args.n_items} x {args.dim} in {time.perf_counter() - started:.0f} s "
              f"({disk_mib(args.store):.0f} MiB)", file=sys.stderr)
        queries = np.sort(np.random.default_rng(1).choice(args.n_items, args.queries, replace=False))
        if args.indices.exists():
            shutil.rmtree(args.indices)
        extra = [*(["--trees", str(args.trees)] if args.trees else []),
                 *(["--index-dimensions", str(args.index_dimensions)] if args.index_dimensions else []),
                 *(["--descriptor", args.descriptor] if args.descriptor else []),
                 *(["--descriptor-dimensions", str(args.descriptor_dimensions)]
                   if args.descriptor_dimensions else [])]
        build = run_phase("build", args, extra)
        started = time.perf_counter()
        truth = ground_truth(args.store, args.indices, queries)
        with open(args.truth, "wb") as handle:
            pickle.dump((truth, queries), handle)
        print(f"ground truth in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        query = run_phase("query", args, ["--sweep", *map(str, args.sweep)] if args.sweep else [])
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report_table(args, build, query, truth)


def mib(memory: dict[str, float]) -> str:
    return f"{memory['peak']:.0f} MiB peak; now {memory['anon']:.0f} anon + {memory['file']:.0f} file-backed"


def report_table(args: argparse.Namespace, build: dict, query: dict, truth: dict) -> None:
    seconds = build["report"]["seconds_by_index"]
    sizes = {name: size / 2**20 for name, size in build["sizes"].items()}
    steps_seconds = seconds.get("projection", 0) + sum(seconds.get(str(step), 0) for step in STEPS)
    print(f"\n{args.n_items:,} x {args.dim} synthetic vectors, {FIRST_YEAR}-{LAST_YEAR}; "
          f"descriptor {build['descriptor']}, n_trees={build['n_trees']}, "
          f"index_dimensions={build['index_dimensions']} "
          f"(PCA keeps {build['variance_kept']:.0%} of the variance); data LID {truth['lid']:.1f}, "
          f"relative contrast {truth['contrast']:.2f}; {os.cpu_count()} cores, 1-min load average "
          f"{build['load']:.1f} after the build, {query['load']:.1f} after the queries\n")
    lines = [("measure", "value"), ("---", "---"),
             ("build, all indices (total wall)", f"{build['report']['seconds']:.1f} s"),
             ("  transform, descriptors, PCA, projecting",
              f"{seconds.get('projection', 0):.1f} s"),
             ("  whole-collection index", f"{seconds.get('all', 0):.1f} s"),
             *[(f"  step {step} indices", f"{seconds.get(str(step), 0):.1f} s") for step in STEPS],
             ("  steps [10, 1] incl. projection (target <= 60 s)", f"{steps_seconds:.1f} s"),
             ("index size on disk, whole collection", f"{sizes.get('all', 0):.0f} MiB"),
             *[(f"index size on disk, step {step}", f"{sizes.get(str(step), 0):.0f} MiB") for step in STEPS],
             ("size on disk, descriptors + transform + projection", f"{sizes.get('other', 0):.0f} MiB"),
             ("peak RSS, build process", mib(build["memory"])),
             ("first query (loads items and indices)", f"{query['first_query_s']:.2f} s"),
             ("RSS, query process after the first query", mib(query["memory_first"])),
             ("RSS, query process at the end (all of the store mapped)", mib(query["memory"]))]
    for row in query["rows"]:
        recall_text = f", recall@10 {row['recall']:.4f}" if row["recall"] is not None else ""
        lines.append((f"n=10, {row['name']}", f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms"
                      f"{recall_text}"))
    for row in query["sweep"]:
        lines.append((f"n=10, step 1, search_k={row['search_k']} ({row['path']})",
                      f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, "
                      f"recall@10 {row['recall']:.4f}"))
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        print(f"| {name.ljust(width)} | {value} |" if name != "---" else f"|{'-' * (width + 2)}|---|")


if __name__ == "__main__":
    main()
