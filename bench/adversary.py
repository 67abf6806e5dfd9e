"""The corruption matrix: damage every file of a collection every way, and see what a server does.

    python bench/adversary.py [--rows 3000] [--queries 40] [--workdir DIR] [--code CHECKOUT]

Builds a clean collection (a synthetic store of --rows 64-d vectors over 1945-1994, indices for steps
10 and 1 over a 16-d projection, so that the whole collection is searched with Annoy, decades with
the scan matrices and thin years exhaustively) and records the clean answers of --queries urns
(steps all, 10 and 1). Then, for every file of the store and of the index directory (the manifests,
the projection, and the Annoy file, rows and scan matrix of the whole-collection index and of one
decade), and for every kind of damage (a byte flipped at the start, middle and end; truncated to half;
zero-filled; overwritten with random bytes), it damages a fresh copy and starts a process that opens
the collection as app.py does and answers the same queries. Each case ends as one of:

    refused      the process exits with a one-line message naming the problem (no traceback)
    correct      answers identical to the clean ones (a damaged index is rebuilt before serving)
    WRONG        answers that differ from the clean ones: the failure this bench exists to catch
    CRASHED      killed by a signal, or a traceback

Target: 0 WRONG and 0 CRASHED. Prints a Markdown table and the totals; exit status 1 otherwise.
--code runs the serving processes from another checkout of the project (e.g. the code before these
checks, `git archive <commit> | tar -x -C DIR`) over the same collections, for comparison.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from siamese.index_build import IndexConfig, build_indices  # noqa: E402
from siamese.index_dir import read_manifest  # noqa: E402
from siamese.vector_store import VectorStore, VectorStoreWriter  # noqa: E402

SERVE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from app import Collection, CollectionError
from siamese.vector_store import StoreError
try:
    collection = Collection(sys.argv[2], sys.argv[3], None)
except (CollectionError, StoreError, ValueError, OSError) as error:  # what app.py's main catches
    print(f"app.py: error: {error}", file=sys.stderr)
    sys.exit(2)
def ask(urn):
    if hasattr(collection, "core"):
        return collection.neighbours(urn, 5, [None, 10, 1])
    return [collection.neighbours(urn, 5, step, False) for step in (None, 10, 1)]  # before issue 8
answers = [ask(urn) for urn in json.loads(sys.argv[4])]
print(json.dumps(answers, allow_nan=False))
"""
DAMAGES = ("flip start", "flip middle", "flip end", "truncate", "zero", "garbage")


def make_collection(directory: Path, rows: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, 64)).astype(np.float32) * 3
    vectors = centres[rng.integers(0, 40, rows)] + rng.standard_normal((rows, 64)).astype(np.float32)
    years = rng.integers(1945, 1995, rows)
    items = [{"urn": f"urn:adversary:{row}", "date": str(year), "year": int(year), "path": f"{row}.jpg",
              "metadata": {"title": f"image {row}"}} for row, year in enumerate(years.tolist())]
    vector_dir, index_dir = directory / "vectors", directory / "indices"
    with VectorStoreWriter(vector_dir, "bench-model", 64) as writer:
        for start in range(0, rows, 500):
            writer.append(vectors[start:start + 500], items[start:start + 500])
    build_indices(VectorStore(vector_dir), index_dir, IndexConfig(step_sizes=(10, 1), index_dimensions=16),
                  verbose=False)
    return vector_dir, index_dir


def targets(vector_dir: Path, index_dir: Path) -> dict[str, Path]:
    manifest = read_manifest(index_dir)
    found = {name: vector_dir / name for name in ("store.json", "vectors.f32", "items.jsonl",
                                                  "checksums.jsonl")}
    found["index.json"] = index_dir / "index.json"
    found["projection"] = index_dir / manifest["projection"]["file"]
    for key, label in (("all", "whole"), ("10/1960", "decade")):
        for kind in ("annoy", "rows", "scan"):
            found[f"{label} {kind}"] = index_dir / manifest["indices"][key][kind]
    return found


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    size = len(data)
    if how.startswith("flip"):
        offset = {"start": min(20, size - 1), "middle": size // 2, "end": max(0, size - 3)}[how.split()[1]]
        data[offset] ^= 0x10
    elif how == "truncate":
        data = data[:size // 2]
    elif how == "zero":
        data = bytearray(size)
    else:
        data = bytearray(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes())
    path.write_bytes(bytes(data))


def serve(vector_dir: Path, index_dir: Path, urns: list[str],
          code: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SERVE, str(code), str(vector_dir), str(index_dir),
                           json.dumps(urns)], capture_output=True, text=True, timeout=300, cwd=code)


def outcome(done: subprocess.CompletedProcess, clean: str) -> tuple[str, str]:
    if done.returncode < 0 or "Traceback" in done.stderr:
        return "CRASHED", (done.stderr.strip().splitlines() or [f"signal {-done.returncode}"])[-1]
    if done.returncode != 0:
        return "refused", done.stderr.strip().splitlines()[-1]
    if done.stdout.strip() == clean:
        rebuilt = "rebuilt at start" if "rebuilding" in done.stderr else ""
        return "correct", rebuilt
    return "WRONG", "answers differ from the clean collection's"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--code", type=Path, default=ROOT, metavar="CHECKOUT",
                        help="the checkout whose app opens the damaged collections (default: this one)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="adversary-"))
    clean_dir = workdir / "clean"
    shutil.rmtree(clean_dir, ignore_errors=True)
    vector_dir, index_dir = make_collection(clean_dir, args.rows)
    urns = VectorStore(vector_dir).urns[::max(1, args.rows // args.queries)][:args.queries]
    first = serve(vector_dir, index_dir, urns, args.code)
    assert first.returncode == 0, first.stderr
    clean = first.stdout.strip()
    totals: dict[str, int] = {}
    print(f"{args.rows:,} rows, {len(urns)} queries (steps all, 10, 1) per case\n")
    print("| file | damage | outcome | detail |\n| --- | --- | --- | --- |")
    for name in targets(vector_dir, index_dir):
        for how in DAMAGES:
            case = workdir / "case"
            shutil.rmtree(case, ignore_errors=True)
            shutil.copytree(clean_dir, case)
            damage(targets(case / "vectors", case / "indices")[name], how)
            result, detail = outcome(serve(case / "vectors", case / "indices", urns, args.code), clean)
            totals[result] = totals.get(result, 0) + 1
            print(f"| {name} | {how} | {result} | {detail[:150].replace('|', '/')} |", flush=True)
    print("\n" + ", ".join(f"{count} {result}" for result, count in sorted(totals.items())))
    return 1 if totals.get("WRONG") or totals.get("CRASHED") else 0


if __name__ == "__main__":
    sys.exit(main())
