"""Memory of a web process: what opening a collection costs, measured in a fresh process (RSS).

    python bench/serve_memory.py [--items 426777] [--workdir DIR] [--compare-with CHECKOUT]

Makes a store of N items (urns, dates and metadata like the newspaper collection's; 16-d vectors, since
the items, not the memory-mapped vectors, are what a process holds in its own memory), builds its
indices (steps 10 and 1), then starts a process that opens the collection as app.py does
(Collection + make_app, one query answered) and reports its resident memory. With --compare-with, the
same measurement runs against another checkout of the project (e.g. the code before the redesign,
`git archive <commit> | tar -x -C DIR`), over the same directories, in the same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from siamese.index_build import IndexConfig, build_indices  # noqa: E402
from siamese.vector_store import VectorStore, VectorStoreWriter  # noqa: E402

DIMENSIONS = 16
PROBE = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
started = time.perf_counter()
import app
before = rss()
collection = app.Collection(sys.argv[2], sys.argv[3], None)
application = app.make_app(collection)
urn = collection.store.urns[len(collection.store.urns) // 2]
collection.neighbours(urn, 10, [None, 10, 1]) if hasattr(collection, "core") else \\
    collection.neighbours(urn, 10, 1, False)
print(json.dumps({"rss_mib": rss(), "rss_after_imports_mib": before,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - started}))
"""


def make_store(directory: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    with VectorStoreWriter(directory, "bench-model", DIMENSIONS) as writer:
        for start in range(0, count, 50_000):
            n = min(50_000, count - start)
            years = rng.integers(1945, 1995, n)
            items = [{"urn": f"ddd:{11000000 + start + i:09d}:mpeg21:a{(start + i) % 10000:04d}",
                      "date": f"{year}-0{1 + i % 9}-1{i % 10}", "year": int(year),
                      "path": f"{year}/ddd-{11000000 + start + i:09d}-mpeg21-a{(start + i) % 10000:04d}.jpg",
                      "metadata": {"newspaper": "Algemeen Handelsblad" if i % 2 else "NRC Handelsblad",
                                   "title": f"advertentie {start + i}"}}
                     for i, year in enumerate(years.tolist())]
            writer.append(rng.standard_normal((n, DIMENSIONS)).astype(np.float32), items)


def measure(checkout: Path, vector_dir: Path, index_dir: Path, rounds: int) -> dict:
    results = []
    for _ in range(rounds):
        done = subprocess.run([sys.executable, "-c", PROBE, str(checkout), str(vector_dir), str(index_dir)],
                              capture_output=True, text=True, check=True, cwd=checkout)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {name: float(np.median([result[name] for result in results])) for name in results[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=426_777)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the store goes (default: a temp dir)")
    parser.add_argument("--compare-with", type=Path, default=None, metavar="CHECKOUT")
    parser.add_argument("--rounds", type=int, default=3, help="processes per checkout; medians are reported")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="serve-memory-"))
    vector_dir, index_dir = workdir / "vectors", workdir / "indices"
    if not (vector_dir / "store.json").exists():
        clock = time.perf_counter()
        make_store(vector_dir, args.items)
        print(f"store of {args.items:,} items in {time.perf_counter() - clock:.0f} s", file=sys.stderr)
    store = VectorStore(vector_dir)
    config = IndexConfig(step_sizes=(10, 1), index_dimensions=DIMENSIONS)
    build_indices(store, index_dir, config, verbose=False)
    items_mib = (vector_dir / "items.jsonl").stat().st_size / 2**20
    print(f"{store.count:,} items (items.jsonl {items_mib:.0f} MiB), steps 10 and 1, "
          f"{args.rounds} processes each")
    checkouts = {"this checkout": ROOT}
    if args.compare_with:
        checkouts["compared checkout"] = args.compare_with
    for name, checkout in checkouts.items():
        result = measure(checkout, vector_dir, index_dir, args.rounds)
        print(f"{name:18} RSS {result['rss_mib']:7.0f} MiB after opening and one query "
              f"({result['rss_after_imports_mib']:.0f} MiB after imports; peak {result['peak_mib']:.0f} MiB; "
              f"{result['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
