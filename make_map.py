"""Make the collection map: every image laid out by visual similarity, its themes and their counts over
time, saved beside the indices (siamese/map_build.py; the web app's /map page and /api/map draw it).

    python make_map.py VECTOR_DIR INDEX_DIR [--thumbnails DIR] [--clusters K] [--neighbours 15]
                       [--min-dist 0.1] [--seed N] [--force]

A step of its own after `annoy_indexer.py build`, not part of it: it takes minutes where an index build
of new rows takes seconds, and it needs umap-learn, which searching never does. Run it again after
adding images: the new ones are placed on the existing map (nothing else moves); --force lays the
whole collection out again. Interrupted, it continues where it stopped.
"""

from __future__ import annotations

import json
import sys

from siamese.cli import Parser, run_command
from siamese.index_dir import IndexDamaged
from siamese.map_build import DEFAULT_MIN_DIST, DEFAULT_NEIGHBOURS, MapError, build_map
from siamese.map_files import MapDamaged
from siamese.vector_store import StoreError


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="make_map.py", description=(
        "Lay the collection out on a 2-D map by visual similarity (UMAP of the indices' descriptors), find "
        "its themes (k-means clusters, labelled from the metadata where a value dominates), and make the "
        "sprite atlases the map page zooms into. Saved in INDEX_DIR beside the indices."))
    parser.add_argument("vector_dir", metavar="VECTOR_DIR", help="the vector store (extract_vectors.py)")
    parser.add_argument("index_dir", metavar="INDEX_DIR",
                        help="its indices (annoy_indexer.py build), built for the store as it is now")
    parser.add_argument("--thumbnails", metavar="DIR",
                        help="the thumbnails (make_thumbnails.py): the map shows them when zoomed in; "
                             "without them it shows points only")
    parser.add_argument("--clusters", type=int, metavar="K",
                        help="number of themes (default: about sqrt(images / 5), 2 to 100; kept from the "
                             "existing map when not given)")
    parser.add_argument("--neighbours", type=int, default=DEFAULT_NEIGHBOURS, metavar="N",
                        help=f"UMAP's n_neighbors: larger keeps more of the global structure, smaller "
                             f"more of the local (default {DEFAULT_NEIGHBOURS})")
    parser.add_argument("--min-dist", type=float, default=DEFAULT_MIN_DIST, metavar="D",
                        help=f"UMAP's min_dist: how tightly similar images are packed (default "
                             f"{DEFAULT_MIN_DIST})")
    parser.add_argument("--seed", type=int, metavar="N",
                        help="a reproducible map (UMAP then runs on one core: slower)")
    parser.add_argument("--force", action="store_true",
                        help="lay out the whole collection again instead of placing new images on the map")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.clusters is not None and not 1 <= args.clusters <= 10_000:
        parser.error("--clusters must be from 1 to 10000")
    if not 2 <= args.neighbours <= 200:
        parser.error("--neighbours must be from 2 to 200")
    if not 0 <= args.min_dist <= 1:
        parser.error("--min-dist must be from 0 to 1")

    def command() -> int:
        manifest = build_map(args.vector_dir, args.index_dir, args.thumbnails, n_clusters=args.clusters,
                             n_neighbors=args.neighbours, min_dist=args.min_dist, force=args.force,
                             progress=not args.quiet, seed=args.seed)
        made = manifest["made"]
        if made.get("up_to_date"):
            print(f"the map of {manifest['count']:,} images is up to date")
        else:
            what = "remade the map"
            if made.get("placed"):
                what = f"placed {made['placed']:,} new images on the map"
            elif made.get("laid_out"):
                what = f"laid out {made['laid_out']:,} images"
            print(f"{what}: {manifest['count']:,} images, {len(manifest['clusters']['info'])} themes, "
                  f"{made.get('atlases', 0)} atlases, {made['seconds']} s")
        labelled = [cluster["label"] for cluster in manifest["clusters"]["info"]
                    if not cluster["label"].startswith("cluster ")]
        if labelled:
            print("themes named by their metadata: " + json.dumps(labelled[:8], ensure_ascii=False)[1:-1]
                  + (" ..." if len(labelled) > 8 else ""))
        return 0

    return run_command("make_map.py", command, (MapError, MapDamaged, IndexDamaged, StoreError, ValueError,
                                                 OSError),
                       "finished stages are kept, run the same command again to continue")


if __name__ == "__main__":
    sys.exit(main())
