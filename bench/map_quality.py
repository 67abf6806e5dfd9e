"""How good the collection map is on a real collection: does it keep neighbours near, do its themes
group what belongs together, and how well are images added later placed?

    python bench/map_quality.py [--vector-dir data/demo/vectors] [--thumbnails data/demo/thumbnails]
                                [--columns category,maker] [--held-out 0.1] [--work-dir DIR]

Builds the indices with annoy_indexer's defaults into a fresh directory (whitened descriptors, as
`make demo` on a fresh machine does), makes the map with make_map's defaults, then reports:

  trustworthiness@10   sklearn.manifold.trustworthiness of the layout in the descriptor space the
                       search ranks in (1: every point's 10 nearest on the map are among its nearest
                       in that space); floors: a random layout and the first two principal axes
  AMI                  adjusted mutual information of the themes (k-means clusters) with each metadata
                       column given; floor: random labels with as many clusters
  placed               the map of all but --held-out of the rows (chosen at random), the rest placed on
                       it as make_map.py places images added later: trustworthiness of the result
  atlases              thumbnails put into sprite atlases per second

The demo (emoji drawn by two makers) has Unicode categories: clusters of drawings are not expected to
match them fully (a red heart and a red apple look alike), so AMI is a comparison, not a target.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from siamese import map_build  # noqa: E402
from siamese.index_build import IndexConfig, build_indices  # noqa: E402
from siamese.map_files import open_map  # noqa: E402
from siamese.vector_store import VectorStore  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vector-dir", type=Path, default=ROOT / "data/demo/vectors")
    parser.add_argument("--thumbnails", type=Path, default=ROOT / "data/demo/thumbnails")
    parser.add_argument("--columns", default="category,maker")
    parser.add_argument("--held-out", type=float, default=0.1)
    parser.add_argument("--work-dir", type=Path)
    args = parser.parse_args()
    from sklearn.manifold import trustworthiness
    from sklearn.metrics import adjusted_mutual_info_score

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="map-quality-"))
    indices = work / "indices"
    store = VectorStore(args.vector_dir)
    results: dict = {"rows": store.count}
    started = time.perf_counter()
    build_indices(store, indices, IndexConfig(step_sizes=(10, 1)), verbose=False)
    results["index_build_s"] = round(time.perf_counter() - started, 1)
    thumbnails = args.thumbnails if args.thumbnails.is_dir() else None
    manifest = map_build.build_map(args.vector_dir, indices, thumbnails, progress=False)
    made = manifest["made"]
    results["map"] = {key: made.get(key) for key in ("seconds", "layout_seconds", "clusters_seconds",
                                                     "atlases_seconds")}
    results["clusters"] = len(manifest["clusters"]["info"])
    if thumbnails is not None and made.get("atlases_seconds"):
        results["atlas_images_per_s"] = round(store.count / made["atlases_seconds"])
    space, _ = map_build.map_space(store, indices)
    collection_map = open_map(indices, store.years())
    layout = np.column_stack([collection_map.x, collection_map.y]).astype(np.float64)
    rng = np.random.default_rng(0)
    centred = space - space.mean(axis=0)
    _, _, axes = np.linalg.svd(centred[rng.choice(len(space), min(5000, len(space)), replace=False)],
                               full_matrices=False)
    results["trustworthiness@10"] = {
        "map": round(trustworthiness(space, layout, n_neighbors=10), 4),
        "random layout": round(trustworthiness(space, rng.random((len(space), 2)), n_neighbors=10), 4),
        "first two principal axes": round(trustworthiness(space, centred @ axes[:2].T, n_neighbors=10), 4)}
    k = len(manifest["clusters"]["info"])
    results["ami"] = {}
    for column in filter(None, args.columns.split(",")):
        values = [(item.get("metadata") or {}).get(column) for item in store.items]
        if all(value is None for value in values):
            continue
        values = ["" if value is None else str(value) for value in values]
        results["ami"][column] = {
            "themes": round(adjusted_mutual_info_score(values, collection_map.clusters), 4),
            "random": round(adjusted_mutual_info_score(values, rng.integers(0, k, len(values))), 4),
            "distinct values": len(set(values))}
    held = np.sort(rng.choice(len(space), int(len(space) * args.held_out), replace=False))
    kept = np.setdiff1d(np.arange(len(space)), held)
    kept_layout = map_build.normalised(map_build.spread_out(map_build.umap_layout(
        space[kept], map_build.DEFAULT_NEIGHBOURS, map_build.DEFAULT_MIN_DIST, None, False)))
    placed = map_build.place_rows(space[kept], kept_layout, space[held], map_build.DEFAULT_NEIGHBOURS)
    combined = np.empty((len(space), 2), np.float32)
    combined[kept], combined[held] = kept_layout, placed
    results["placed"] = {"held_out": len(held),
                         "trustworthiness@10": round(trustworthiness(space, combined, n_neighbors=10), 4)}
    print(json.dumps(results, indent=1))
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
