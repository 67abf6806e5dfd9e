"""How fast, and in how little memory, does import_siamese.py bring in the original Siamese's vectors?

    python bench/import_speed.py [--n-files 20000] [--years 50]

Writes --n-files random 2048-float .npy files in the original layout (`<YEAR>/<ddd-...-mpeg21-aNNNN>.npy`,
KB-style urns that restore unambiguously) into a temporary folder, then imports them in a fresh process
and reports files/s, that process's peak RSS, and the time of a second (resumed, nothing to do) run.
Memory must not grow with the collection: the 426,777 files of the original would be 3.5 GB at once.
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

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from import_siamese import import_siamese
started = time.perf_counter()
report = import_siamese({old!r}, {new!r}, progress=False)
print(json.dumps({{"seconds": time.perf_counter() - started,
                   "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def run_import(old: Path, new: Path) -> dict:
    code = CHILD.format(root=str(ROOT), old=str(old), new=str(new))
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-files", type=int, default=20_000)
    parser.add_argument("--years", type=int, default=50)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="siamese-import-bench-") as work:
        old, new = Path(work) / "old", Path(work) / "new"
        for i in range(args.n_files):
            year = 1945 + i % args.years
            folder = old / str(year)
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / f"ddd-{10_000_000 + i:09d}-mpeg21-a{i % 10_000:04d}.npy",
                    rng.random(2048, dtype=np.float32))
        first = run_import(old, new)
        started = time.perf_counter()
        second = run_import(old, new)
        second_wall = time.perf_counter() - started
        stored = json.loads((new / "store.json").read_text())["count"]
    print(f"{args.n_files} files over {args.years} year folders -> {stored} stored")
    print(f"first run:  {first['seconds']:.1f} s, {args.n_files / first['seconds']:,.0f} files/s, "
          f"peak RSS {first['peak_rss_mib']:.0f} MiB (Python + numpy included)")
    print(f"second run: {second['seconds']:.2f} s inside the import ({second_wall:.1f} s with start-up), "
          "nothing to do")


if __name__ == "__main__":
    main()
