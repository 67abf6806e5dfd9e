"""The collection map at collection scale: build time, memory, what the page downloads, first draw.

    python bench/map_scale.py [--work-dir DIR] [--n-items 426777] [--dim 2048] [--phases build,place,page]
                              [--draws 3] [--keep]

Uses (or writes, with bench/index_scale.py's generator and annoy_indexer.py build --steps 10 1) a real
vector store of synthetic vectors, default 426,777 x 2048, then:

  build   make_map.py VECTOR_DIR INDEX_DIR --force in a fresh process (no thumbnails: the layout and the
          clusters, what the target is about): wall time, its layout and clusters parts, peak RSS
  place   the last 10,000 rows (--place) placed on the map of the others as make_map.py places images
          added later: rows per second, and how far from where UMAP had put them (map units, 0..1)
  page    app.py serving the collection (a real waitress server in its own process); what the map page
          downloads (the binary points raw and gzipped, /api/clusters, the page, map.js); headless
          Debian Chromium (Playwright) opening /map --draws times, each in a fresh browser context:
          milliseconds from navigation start until every point is drawn (window.siameseMap.firstDrawMs),
          median

Targets (issue 14): build <= 15 min on 2 cores, points <= 8 MB, first draw <= 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CHROMIUM = "/usr/bin/chromium"


def prepare(work: Path, n_items: int, dim: int) -> tuple[Path, Path]:
    vectors, indices = work / "vectors", work / "indices"
    if (indices / "index.json").exists():
        return vectors, indices
    sys.path.insert(0, str(ROOT / "bench"))
    from index_scale import generate

    print(f"writing {n_items:,} x {dim} synthetic vectors to {vectors} ...", flush=True)
    generate(vectors, n_items, dim, 1.0, 50, 0.5, 0.05)
    subprocess.run([PYTHON, "annoy_indexer.py", "build", str(vectors), str(indices), "--steps", "10", "1"],
                   cwd=ROOT, check=True)
    return vectors, indices


def phase_build(vectors: Path, indices: Path) -> dict:
    started = time.perf_counter()
    code = ("import json, sys; from siamese.map_build import build_map; "
            "m = build_map(sys.argv[1], sys.argv[2], force=True, progress=False); "
            "print(json.dumps(m['made']))")
    done = subprocess.run([PYTHON, "-c", code, str(vectors), str(indices)], cwd=ROOT, check=True,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    made = json.loads(done.stdout.strip().splitlines()[-1])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the only child so far
    return {"wall_s": round(wall, 1), "peak_rss_mib": round(peak), **made}


def phase_place(vectors: Path, indices: Path, new_rows: int) -> dict:
    """Placing images added after the map was made, as make_map.py does: the last `new_rows` rows placed
    on the map of the others (in this process, from the map just made)."""
    sys.path.insert(0, str(ROOT))
    from siamese import map_build
    from siamese.map_files import load_array, read_map_manifest
    from siamese.vector_store import VectorStore

    space, _ = map_build.map_space(VectorStore(vectors), indices)
    places = load_array(indices, read_map_manifest(indices)["layout"], "layout")
    mapped = len(space) - new_rows
    started = time.perf_counter()
    placed = map_build.place_rows(space[:mapped], places[:mapped], space[mapped:],
                                  map_build.DEFAULT_NEIGHBOURS)
    seconds = time.perf_counter() - started
    moved = np.linalg.norm(placed - places[mapped:], axis=1)
    return {"placed": new_rows, "seconds": round(seconds, 1), "rows_per_s": round(new_rows / seconds),
            "median_distance_from_umap_place": round(float(np.median(moved)), 4)}


def free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def fetch(url: str, gzip: bool = False) -> bytes:
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if gzip else {})
    with urllib.request.urlopen(request, timeout=120) as answer:
        return answer.read()


def phase_page(vectors: Path, indices: Path, draws: int) -> dict:
    port = free_port()
    server = subprocess.Popen([PYTHON, "app.py", "--vector-dir", str(vectors), "--index-dir", str(indices),
                               "--port", str(port), "--workers", "1"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(600):
            try:
                fetch(base + "api/collection")
                break
            except OSError:
                time.sleep(0.5)
        points = fetch(base + "api/map?format=binary")
        points_gzipped = fetch(base + "api/map?format=binary", True)
        clusters = fetch(base + "api/clusters", True)
        page = fetch(base + "map", True)
        script = (ROOT / "static" / "map.js").read_bytes()
        figures = {"points_bytes": len(points), "points_gzip_bytes": len(points_gzipped),
                   "clusters_gzip_bytes": len(clusters), "page_gzip_bytes": len(page),
                   "map_js_bytes": len(script)}
        from playwright.sync_api import sync_playwright

        times = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
            for _ in range(draws):
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                page_handle = context.new_page()
                errors = []
                page_handle.on("pageerror", lambda error, errors=errors: errors.append(str(error)))
                page_handle.goto(base + "map")
                page_handle.wait_for_selector("body[data-map-ready=drawn]", timeout=120_000)
                state = page_handle.evaluate(
                    "() => ({first: window.siameseMap.firstDrawMs, drawn: window.siameseMap.drawnPoints, "
                    "points: window.siameseMap.points})")
                if errors or state["drawn"] != state["points"]:
                    raise SystemExit(f"the page did not draw every point: {state}, errors {errors}")
                times.append(state["first"])
                context.close()
            browser.close()
        figures.update(first_draw_ms=[round(value) for value in times],
                       first_draw_median_ms=round(statistics.median(times)), drawn_points=state["drawn"])
        return figures
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, help="reused when it holds vectors/ and indices/ "
                                                      "(e.g. bench/index_scale.py --keep's)")
    parser.add_argument("--n-items", type=int, default=426_777)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--phases", default="build,place,page")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--place", type=int, default=10_000, help="rows placed in the place phase")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="map-scale-"))
    vectors, indices = prepare(work, args.n_items, args.dim)
    results: dict = {"rows": json.loads((indices / "index.json").read_text())["store"]["count"],
                     "cores": os.cpu_count()}
    try:
        phases = args.phases.split(",")
        if "build" in phases:
            results["build"] = phase_build(vectors, indices)
            print(json.dumps(results["build"]), flush=True)
        if "place" in phases:
            results["place"] = phase_place(vectors, indices, args.place)
            print(json.dumps(results["place"]), flush=True)
        if "page" in phases:
            results["page"] = phase_page(vectors, indices, args.draws)
            print(json.dumps(results["page"]), flush=True)
    finally:
        if args.work_dir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
