"""How long reading a collection's metadata CSV takes: siamese.metadata.read_metadata at full scale.

    python bench/csv_read.py [--rows 426777] [--repeats 5] [--compare-with CHECKOUT]

Writes a CSV shaped like the newspaper collection's (urn, path, date, title, newspaper; a two-line
quoted title in every 7th row, so multi-line records are exercised) and reads it --repeats times in a
fresh process per checkout, reporting the best CPU time and the peak memory. With --compare-with, the
same file is read by another checkout's reader (e.g. the code before the row accounting of issue 9,
`git archive <commit> | tar -x -C DIR`), in the same run.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from siamese.metadata import read_metadata
best = None
for _ in range(int(sys.argv[3])):
    started = time.process_time()
    records, rejected = read_metadata(sys.argv[2])
    spent = time.process_time() - started
    best = spent if best is None else min(best, spent)
print(json.dumps({"cpu_s": best, "records": len(records), "rejected": len(rejected),
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_csv(path: Path, rows: int) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["urn", "path", "date", "title", "newspaper"])
        for row in range(rows):
            title = f"Advertentie {row}\nvervolg" if row % 7 == 0 else f"Advertentie {row}"
            year = 1945 + row % 50
            writer.writerow([f"ddd:{11000000 + row:09d}:mpeg21:a{row % 10000:04d}",
                             f"{year}/{row}.jpg", f"{year}-0{1 + row % 9}-1{row % 10}", title,
                             "NRC Handelsblad" if row % 2 else "Algemeen Handelsblad"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=426_777)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compare-with", type=Path, default=None, metavar="CHECKOUT")
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp(prefix="csv-read-")) / "metadata.csv"
    write_csv(path, args.rows)
    print(f"{args.rows:,} rows, {path.stat().st_size / 2**20:.0f} MiB; best CPU time of {args.repeats}\n")
    print("| code | CPU s | records | rejected | peak MiB |\n| --- | ---: | ---: | ---: | ---: |")
    checkouts = {"this checkout": ROOT}
    if args.compare_with:
        checkouts["compared checkout"] = args.compare_with
    for name, checkout in checkouts.items():
        done = subprocess.run([sys.executable, "-c", PROBE, str(checkout), str(path), str(args.repeats)],
                              capture_output=True, text=True, check=True, cwd=checkout)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {name} | {result['cpu_s']:.2f} | {result['records']:,} | {result['rejected']} | "
              f"{result['peak_mib']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
