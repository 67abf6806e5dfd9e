"""Making the collection map: a 2-D layout of every image by visual similarity, its clusters (themes),
sprite atlases of the thumbnails and an overview picture; files and manifest are siamese/map_files.py's.

Why these choices (measured, docs/benchmarks.md "The collection map"):
- The layout is UMAP (umap-learn, its k-nearest-neighbour graph from pynndescent) of the indices'
  own descriptors, the space the search ranks in, so that what is near on the map is what a search
  answers; on the demo it keeps a row's 10 nearest neighbours near (trustworthiness 0.96; the first
  two principal axes 0.68). Descriptors of more than MAP_DIMENSIONS dimensions (a `raw` index
  directory's 2,048) are reduced by PCA first: the graph's cost grows with the dimensions.
- Clusters are k-means in the same descriptor space (MiniBatchKMeans): a new image's cluster is its
  nearest centre, so additions never reshuffle the themes a researcher has been reading.
- Rows added to the store after a map was made are placed without recomputing the rest: at the
  distance-weighted mean of the places of their nearest mapped rows (in the descriptor space). The
  map of everything else stays put; `--force` lays the whole collection out again.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from siamese import index_dir as layout
from siamese import map_files as files
from siamese.facets import Facets
from siamese.thumbnails import Thumbnails
from siamese.vector_store import VectorStore

MAP_DIMENSIONS = 256  # descriptors wider than this are PCA-reduced before the layout
DEFAULT_NEIGHBOURS = 15  # UMAP's n_neighbors: 15 and 30 measured alike on the demo (0.961, 0.957)
DEFAULT_MIN_DIST = 0.1
MAX_CLUSTERS = 100
REPRESENTATIVES = 6
LABEL_SHARE = 0.5  # a value names a cluster when at least this share of its members have it
LABEL_LIFT = 1.5  # ... and it is this much more common there than in the whole collection
SPREAD = 0.8  # how far the layout's outskirts are drawn in (spread_out)
LABEL_VALUES = 2  # a label names at most this many columns' values
MAX_LABEL_VALUES = 50  # columns with more distinct values (titles, ids) never name a cluster
OVERVIEW = 512  # pixels of the overview's side
LAYOUT_SETTINGS = ("n_neighbors", "min_dist", "n_clusters")  # another value of one: laid out again
PLACE_CHUNK = 2048  # new rows placed at a time (their distances to every mapped row in memory) ...
PLACE_VALUES = 50_000_000  # ... but at most this many distances at once (200 MB: 117 rows at 426,777)


class MapError(ValueError):
    """Why a map cannot be made (no indices, a store changed under them); one line for the CLI."""


def default_clusters(count: int) -> int:
    """About sqrt(count / 5) clusters, 2 to MAX_CLUSTERS: 39 for the demo's 7,572 images, 100 from
    50,000 on, themes a researcher can read through rather than one per handful of images."""
    return int(min(MAX_CLUSTERS, max(2, round(math.sqrt(count / 5))), max(count, 1)))


# --------------------------------------------------------------------------------- the map's space

def map_space(store: VectorStore, index_dir: Path) -> tuple[np.ndarray, dict]:
    """Every row's descriptor as the index directory searches it (float32, at most MAP_DIMENSIONS
    dimensions), and what the manifest records of where they came from."""
    manifest = layout.read_manifest(index_dir)
    if manifest is None:
        raise MapError(f"no indices in {index_dir}: build them first (python annoy_indexer.py build "
                       "VECTOR_DIR INDEX_DIR); the map is made from their descriptors")
    if manifest.get("store") != layout.store_state(store) or "pending" in manifest:
        raise MapError(f"the indices in {index_dir} are not those of the store as it is now (more images "
                       "were extracted, or a build was interrupted): run annoy_indexer.py build first")
    transform = layout.read_transform(index_dir, manifest.get("transform"))
    if transform.is_identity:
        descriptors = store.vectors
    else:
        recorded = manifest.get("descriptors") or {}
        descriptors = layout.read_descriptors(index_dir, recorded, store.count,
                                              transform.dimensions(store.n_dimensions))
    space = np.ascontiguousarray(descriptors, dtype=np.float32)
    source = {"descriptor": manifest.get("descriptor", "raw"), "transform": transform.sha1,
              "dimensions": int(space.shape[1])}
    if space.shape[1] > MAP_DIMENSIONS:
        space = principal_axes(space, MAP_DIMENSIONS)
        source["reduced_to"] = MAP_DIMENSIONS
    return space, source


def principal_axes(points: np.ndarray, dimensions: int, sample: int = 50_000) -> np.ndarray:
    """`points` on their first `dimensions` principal axes (fitted on a seeded sample)."""
    rows = np.sort(np.random.default_rng(0).choice(len(points), min(len(points), sample), replace=False))
    chosen = points[rows].astype(np.float64)
    mean = chosen.mean(axis=0)
    _, vectors = np.linalg.eigh(np.cov(chosen - mean, rowvar=False))
    axes = vectors[:, ::-1][:, :dimensions].astype(np.float32)
    return np.ascontiguousarray((points - mean.astype(np.float32)) @ axes)


# ---------------------------------------------------------------------------------------- layout

def _umap_class() -> type:
    """umap-learn's UMAP class, without TensorFlow: the package's __init__ imports its parametric
    variant (TensorFlow, seconds and half a gigabyte) whenever TensorFlow is installed, as it is here;
    a None entry in sys.modules makes that import fail, which the package expects and skips."""
    blocked = "umap.parametric_umap" not in sys.modules
    if blocked:
        sys.modules["umap.parametric_umap"] = None  # type: ignore[assignment]
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from umap.umap_ import UMAP
    except ImportError as error:
        raise MapError(f"the map needs umap-learn ({error}): pip install -r requirements.txt") from None
    finally:
        if blocked:
            sys.modules.pop("umap.parametric_umap", None)
    return UMAP


def umap_layout(space: np.ndarray, n_neighbors: int, min_dist: float, seed: int | None,
                progress: bool) -> np.ndarray:
    """UMAP's 2-D embedding of the rows. With a seed it is reproducible but single-threaded (UMAP's
    own trade-off); without, the optimisation uses every core."""
    count = len(space)
    if count < 4:  # UMAP needs a few neighbours; one to three images are placed on a line
        return np.column_stack([np.arange(count, dtype=np.float32), np.zeros(count, np.float32)])
    umap = _umap_class()
    model = umap(n_neighbors=min(n_neighbors, count - 1), min_dist=min_dist, metric="euclidean",
                 random_state=seed, low_memory=True, verbose=progress,
                 tqdm_kwds={"file": sys.stderr, "disable": not progress},
                 init="spectral" if count > 16 else "random")
    with warnings_silenced():
        return np.asarray(model.fit_transform(space), dtype=np.float32)


@contextlib.contextmanager
def warnings_silenced() -> Iterator[None]:
    """UMAP and numba warn about what the caller chose on purpose (a seed disabling parallelism, a
    small graph); the command's own output stays readable."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def spread_out(points: np.ndarray, amount: float = SPREAD) -> np.ndarray:
    """The layout with its outskirts drawn in: each point keeps its direction from the centre (the
    median) but moves to a radius mixing its own (1 - amount) with the equal-area radius of its rank
    (amount). UMAP puts small groups of look-alikes with nothing else like them (a collection's
    oddities) far out, which left the dense core a speck in the middle of the square (the demo: half
    the images within a quarter of the radius). The order of radii is kept, and so are neighbourhoods
    (demo trustworthiness@10 0.9607 before, 0.9601 after)."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) < 3:
        return points
    centre = np.median(points, axis=0)
    offsets = points - centre
    radii = np.linalg.norm(offsets, axis=1)
    largest = float(radii.max()) or 1.0
    rank = (np.argsort(np.argsort(radii, kind="stable"), kind="stable") + 1) / len(radii)
    new_radii = ((1 - amount) * radii / largest + amount * np.sqrt(rank)) * largest
    return centre + offsets / np.maximum(radii, 1e-12)[:, None] * new_radii[:, None]


def normalised(points: np.ndarray) -> np.ndarray:
    """The layout scaled into [0, 1]², aspect ratio kept, centred; outliers beyond the 0.05th and
    99.95th percentiles are pulled onto the border rather than shrinking everyone else to a dot."""
    points = np.asarray(points, dtype=np.float64)
    if not len(points):
        return np.zeros((0, 2), np.float32)
    low = np.percentile(points, 0.05, axis=0)
    high = np.percentile(points, 99.95, axis=0)
    span = float(max((high - low).max(), 1e-9))
    margin = 0.02
    scaled = (points - (low + high) / 2) / span * (1 - 2 * margin) + 0.5
    return np.clip(scaled, 0, 1).astype(np.float32)


def nearest_rows(space: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest rows of `space` to each query (euclidean): (rows, distances), nearest first."""
    k = min(k, len(space))
    norms = np.einsum("ij,ij->i", space, space)
    best_rows = np.empty((len(queries), k), dtype=np.int64)
    best_distances = np.empty((len(queries), k), dtype=np.float32)
    step = max(1, min(PLACE_CHUNK, PLACE_VALUES // max(len(space), 1)))
    for start in range(0, len(queries), step):
        chunk = queries[start:start + step]
        squared = norms[None, :] - 2 * (chunk @ space.T) + np.einsum("ij,ij->i", chunk, chunk)[:, None]
        part = np.argpartition(squared, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(squared, part, axis=1).argsort(axis=1)
        rows = np.take_along_axis(part, order, axis=1)
        best_rows[start:start + len(chunk)] = rows
        best_distances[start:start + len(chunk)] = np.sqrt(np.maximum(
            np.take_along_axis(squared, rows, axis=1), 0))
    return best_rows, best_distances


def place_rows(mapped_space: np.ndarray, mapped_layout: np.ndarray, new_space: np.ndarray,
               k: int) -> np.ndarray:
    """Places for new rows on an existing map: the mean of their k nearest mapped rows' places,
    weighted by closeness (an identical image lands on its twin)."""
    rows, distances = nearest_rows(mapped_space, new_space, k)
    weights = 1 / (distances + 1e-3 * (float(np.median(distances)) + 1e-12))
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("ij,ijk->ik", weights, mapped_layout[rows]).astype(np.float32)


# -------------------------------------------------------------------------------------- clusters

def find_clusters(space: np.ndarray, n_clusters: int, seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """k-means of the rows: (every row's cluster, the centres), clusters numbered largest first."""
    from sklearn.cluster import MiniBatchKMeans

    n_clusters = max(1, min(n_clusters, len(space)))
    model = MiniBatchKMeans(n_clusters=n_clusters, random_state=0 if seed is None else seed, n_init=3,
                            batch_size=4096)
    with warnings_silenced():
        labels = model.fit_predict(space)
    centres = model.cluster_centers_.astype(np.float32)
    order = np.argsort(-np.bincount(labels, minlength=n_clusters), kind="stable")
    renumber = np.empty(n_clusters, dtype=np.int64)
    renumber[order] = np.arange(n_clusters)
    return renumber[labels].astype(np.uint16), centres[order]


def nearest_centres(space: np.ndarray, centres: np.ndarray) -> np.ndarray:
    rows, _ = nearest_rows(centres, space, 1)
    return rows[:, 0].astype(np.uint16)


def describe_clusters(store: VectorStore, space: np.ndarray, labels: np.ndarray, centres: np.ndarray,
                      places: np.ndarray) -> list[dict]:
    """Each cluster's size, centre on the map, representatives (the members nearest its centre) and a
    label from its members' metadata where one value dominates (else "cluster N")."""
    facets = Facets(store)
    columns = []
    for name in facets.names():
        column = facets.column(name)
        if 2 <= len(column.values) <= MAX_LABEL_VALUES:
            codes = column.codes[:len(labels)]
            overall = np.bincount(codes[codes >= 0], minlength=len(column.values)) / max(len(codes), 1)
            columns.append((name, column, codes, overall))
    described, used = [], {}
    for cluster in range(len(centres)):
        members = np.flatnonzero(labels == cluster)
        info: dict = {"id": cluster, "size": int(len(members)), "label": f"cluster {cluster + 1}",
                      "representatives": [], "x": 0.5, "y": 0.5}
        if len(members):
            distances = np.linalg.norm(space[members] - centres[cluster], axis=1)
            info["representatives"] = [int(row) for row in members[np.argsort(distances)[:REPRESENTATIVES]]]
            centre = np.median(places[members], axis=0)
            info["x"], info["y"] = round(float(centre[0]), 5), round(float(centre[1]), 5)
            dominant = []
            for name, column, codes, overall in columns:
                counts = np.bincount(codes[members][codes[members] >= 0], minlength=len(column.values))
                value = int(counts.argmax())
                share = counts[value] / len(members)
                lift = share / max(overall[value], 1e-12)
                if share >= LABEL_SHARE and lift >= LABEL_LIFT:
                    dominant.append((lift, f"{name}: {column.values[value]}", share))
            if dominant:  # the two most distinctive values, e.g. "newspaper: Trouw · category: cars"
                chosen = sorted(dominant, reverse=True)[:LABEL_VALUES]
                label = " · ".join(text for _, text, _ in chosen)
                used[label] = used.get(label, 0) + 1
                info["label"] = label if used[label] == 1 else f"{label} ({used[label]})"
                info["label_share"] = round(float(min(share for _, _, share in chosen)), 3)
        described.append(info)
    return described


# ------------------------------------------------------------------------------- atlases, overview

def _sprite(path: Path | None) -> Image.Image | None:
    if path is None:
        return None
    try:
        with Image.open(path) as image:
            image.draft("RGB", (files.CELL, files.CELL))  # JPEG decoded at 1/2-1/8 scale: much faster
            sprite = image.convert("RGB")
        sprite.thumbnail((files.CELL, files.CELL), Image.Resampling.LANCZOS)
        return sprite
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def atlas_image(paths: list[Path | None], pool: ThreadPoolExecutor) -> tuple[bytes, int]:
    """One atlas (JPEG) of these thumbnails, in order; (its bytes, how many had no thumbnail)."""
    rows_used = max(1, math.ceil(len(paths) / files.COLUMNS))
    atlas = Image.new("RGB", (files.COLUMNS * files.CELL, rows_used * files.CELL), (72, 72, 72))
    missing = 0
    for cell, sprite in enumerate(pool.map(_sprite, paths)):
        if sprite is None:
            missing += 1
            continue
        left = cell % files.COLUMNS * files.CELL + (files.CELL - sprite.width) // 2
        top = cell // files.COLUMNS * files.CELL + (files.CELL - sprite.height) // 2
        atlas.paste(sprite, (left, top))
    buffer = io.BytesIO()
    atlas.save(buffer, "JPEG", quality=82, optimize=True)
    return buffer.getvalue(), missing


# the map page's scale (static/map.js YEAR_SCALE): viridis' hues from blue-violet to yellow, its darkest
# part lifted so that the first years show on the dark background
YEAR_COLOURS = np.array([(104, 110, 232), (62, 140, 214), (40, 170, 190), (38, 190, 140), (122, 209, 81),
                         (253, 231, 37)], dtype=np.float64)


def year_colours(years: np.ndarray) -> np.ndarray:
    """A colour per year on a sequential scale from the first year to the last (grey where unknown)."""
    known = years != files.NO_YEAR
    colours = np.full((len(years), 3), 150, dtype=np.uint8)
    if known.any():
        low, high = years[known].min(), years[known].max()
        position = (years[known] - low) / max(float(high - low), 1.0) * (len(YEAR_COLOURS) - 1)
        base = np.minimum(position.astype(int), len(YEAR_COLOURS) - 2)
        fraction = (position - base)[:, None]
        colours[known] = np.rint(YEAR_COLOURS[base] * (1 - fraction) + YEAR_COLOURS[base + 1] * fraction)
    return colours


def overview_png(places: np.ndarray, years: np.ndarray) -> bytes:
    """The whole map as a small PNG (dark background, points coloured by year), framed as the binary
    points are: its width and its height both span 0..1."""
    canvas = np.full((OVERVIEW, OVERVIEW, 3), 24, dtype=np.uint8)
    pixels = np.clip((places * (OVERVIEW - 1)).round().astype(int), 0, OVERVIEW - 1)
    colours = year_colours(years)
    # a few thousand points: 3-pixel dots, or a small collection is a dark square in the search page's inset
    offsets = [(0, 0)] if len(places) > 20_000 else [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]
    for dx, dy in offsets:
        canvas[np.clip(pixels[:, 1] + dy, 0, OVERVIEW - 1),
               np.clip(pixels[:, 0] + dx, 0, OVERVIEW - 1)] = colours
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------- build

def build_map(vector_dir: str | os.PathLike, index_dir: str | os.PathLike,
              thumbnail_dir: str | os.PathLike | None = None, n_clusters: int | None = None,
              n_neighbors: int = DEFAULT_NEIGHBOURS, min_dist: float = DEFAULT_MIN_DIST,
              force: bool = False, progress: bool = False, seed: int | None = None) -> dict:
    """Make (or bring up to date) the map of the store in `vector_dir` from the indices in
    `index_dir`, saved beside them; returns the manifest (map.json), with "made": what this call did.

    Resumable: every finished stage (layout, clusters, each atlas, the overview) is recorded at once,
    and a rerun continues from there. Incremental: rows added to the store since the map was made are
    placed on it and given the nearest cluster; the rest stays as it was (force: all laid out again).
    """
    vector_dir, index_dir = Path(vector_dir), Path(index_dir)
    store = VectorStore(vector_dir)
    if not index_dir.is_dir():
        raise MapError(f"no index directory {index_dir}: build the indices first (python annoy_indexer.py "
                       "build VECTOR_DIR INDEX_DIR)")
    thumbnails = Thumbnails(thumbnail_dir) if thumbnail_dir is not None else None
    if thumbnails is not None and not thumbnails.directory.is_dir():
        raise MapError(f"--thumbnails: no such folder: {thumbnail_dir}")
    with open(index_dir / files.MAP_LOCK, "w") as handle:
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_EX)
        for leftover in index_dir.glob(f"{layout.TEMPORARY_PREFIX}*map-*.tmp"):
            leftover.unlink(missing_ok=True)
        return _build(store, index_dir, thumbnails, n_clusters, n_neighbors, min_dist, force, progress, seed)


def _build(store: VectorStore, index_dir: Path, thumbnails: Thumbnails | None, n_clusters: int | None,
           n_neighbors: int, min_dist: float, force: bool, progress: bool, seed: int | None) -> dict:
    started = time.perf_counter()
    count = store.count
    try:
        on_disk = files.read_map_manifest(index_dir)  # the map served now, and any work left pending
    except files.MapDamaged:
        if not force:
            raise
        on_disk = None
    served = {key: value for key, value in (on_disk or {}).items() if key != "pending"}
    complete = served if served.get("layout") and not force else None
    settings = {"method": "umap", "n_neighbors": n_neighbors, "min_dist": min_dist,
                "n_clusters": n_clusters or default_clusters(count), "seed": seed}
    if complete is not None and n_clusters is None:
        settings["n_clusters"] = complete["settings"]["n_clusters"]  # kept as the map was made
    if complete is not None and (complete.get("count", 0) > count or any(
            complete["settings"].get(key) != settings[key] for key in LAYOUT_SETTINGS)):
        complete = None  # other settings, or a store made again with fewer rows: laid out again
    if complete is not None:
        files.verify_map(index_dir, complete)  # a damaged map is named, and --force remakes it
    if complete is not None and complete["count"] == count and (thumbnails is None or (
            (complete.get("atlases") or {}).get("thumbnails") == str(thumbnails.directory)
            and complete["atlases"].get("state") == thumbnails.state())):
        return {**complete, "made": {"up_to_date": True}}
    if thumbnails is None and complete is not None and (complete.get("atlases") or {}).get("thumbnails"):
        previous = Path(complete["atlases"]["thumbnails"])  # the folder the map's atlases came from
        if previous.is_dir():
            thumbnails = Thumbnails(previous)
    space, source = map_space(store, index_dir)
    years = store.years()
    made: dict = {}
    base = (complete or {}).get("version_of")
    pending = (on_disk or {}).get("pending")
    if not pending or pending.get("count") != count or pending.get("settings") != settings or \
            pending.get("base") != base:
        pending = {"count": count, "settings": settings, "base": base}  # earlier work of other rows: dropped

    def record() -> None:
        files.write_map_manifest(index_dir, {**served, "format": files.FORMAT, "version": files.VERSION,
                                             "pending": pending})

    stages = tqdm(total=4, desc="map", unit="stage", file=sys.stderr, disable=not progress, leave=False)
    # 1. the layout: all of it, or the new rows placed on the existing map
    if pending.get("layout"):
        places = files.load_array(index_dir, pending["layout"], "layout")
    elif complete is not None:
        places = files.load_array(index_dir, complete["layout"], "layout")
        mapped = len(places)
        if mapped < count:
            new = place_rows(space[:mapped], places, space[mapped:], n_neighbors)
            places = np.vstack([places, np.clip(new, 0, 1)]).astype(np.float32)
            made["placed"] = count - mapped
        pending["layout"] = files.save_array(index_dir, "layout", places)
        pending["fitted_on"] = complete.get("fitted_on", mapped)
        record()
    else:
        stages.set_postfix_str("layout (UMAP)")
        layout_started = time.perf_counter()
        places = normalised(spread_out(umap_layout(space, n_neighbors, min_dist, seed, progress)))
        made["layout_seconds"] = round(time.perf_counter() - layout_started, 1)
        made["laid_out"] = count
        pending["layout"] = files.save_array(index_dir, "layout", places)
        pending["fitted_on"] = count
        record()
    stages.update()
    # 2. clusters: found with a new layout; on an extended map new rows join their nearest centre
    if not pending.get("clusters"):
        stages.set_postfix_str("clusters")
        if complete is not None:
            centres = files.load_array(index_dir, complete["clusters"]["centres"], "cluster centres")
            labels = files.load_array(index_dir, complete["clusters"]["labels"], "clusters")
            labels = np.concatenate([labels, nearest_centres(space[len(labels):], centres)])
        else:
            clusters_started = time.perf_counter()
            labels, centres = find_clusters(space, settings["n_clusters"], seed)
            made["clusters_seconds"] = round(time.perf_counter() - clusters_started, 1)
        info = describe_clusters(store, space, labels, centres, places)
        pending["clusters"] = {"labels": files.save_array(index_dir, "clusters", labels.astype(np.uint16)),
                               "centres": files.save_array(index_dir, "centres", centres), "info": info}
        record()
    stages.update()
    # 3. sprite atlases of the thumbnails, one file per PER_ATLAS rows, each recorded when written
    stages.set_postfix_str("atlases")
    atlases_started = time.perf_counter()
    pending["atlases"] = None if thumbnails is None else \
        _atlases(store, index_dir, thumbnails, complete, pending, record, progress)
    made["atlases_seconds"] = round(time.perf_counter() - atlases_started, 1)
    stages.update()
    # 4. the overview, then the new map promoted whole
    stages.set_postfix_str("overview")
    data = overview_png(places, _int16_years(years))
    pending["overview"] = files.save_file(index_dir, files.content_name("overview", data, "png"), data)
    stages.update()
    stages.close()
    manifest = {"format": files.FORMAT, "version": files.VERSION, "count": count,
                "store": layout.store_state(store), "source": source, "settings": settings,
                "fitted_on": pending.get("fitted_on", count), "layout": pending["layout"],
                "clusters": pending["clusters"], "atlases": pending["atlases"],
                "overview": pending["overview"], "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    manifest["version_of"] = files.content_name(
        "generation", repr(sorted(files.referenced_files(manifest))).encode(), "id")
    files.write_map_manifest(index_dir, manifest)
    files.collect_garbage(index_dir, manifest, previous=served)
    made["seconds"] = round(time.perf_counter() - started, 1)
    if pending["atlases"] is not None:
        made["atlases"] = len(pending["atlases"]["files"])
    return {**manifest, "made": made}


def _int16_years(years: np.ndarray) -> np.ndarray:
    return np.where((years > files.NO_YEAR) & (years <= 32767), years, files.NO_YEAR).astype(np.int16)


def _atlases(store: VectorStore, index_dir: Path, thumbnails: Thumbnails, complete: dict | None,
             pending: dict, record, progress: bool) -> dict:
    """The atlases, each recorded as soon as it is written; atlases of a complete map are kept when they
    are full and were made from the same thumbnail folder with none missing since (else made again)."""
    count = store.count
    state = thumbnails.state()
    done = {atlas["number"]: atlas for atlas in ((pending.get("atlases") or {}).get("files") or [])}
    previous = (complete or {}).get("atlases") or {}
    if previous.get("thumbnails") == str(thumbnails.directory):
        for atlas in previous.get("files") or []:
            full = atlas["rows"][1] - atlas["rows"][0] == files.PER_ATLAS and atlas["rows"][1] <= count
            if full and (atlas["missing"] == 0 or previous.get("state") == state):
                done.setdefault(atlas["number"], atlas)
    numbers = range(math.ceil(count / files.PER_ATLAS))
    atlases = {"cell": files.CELL, "columns": files.COLUMNS, "per_atlas": files.PER_ATLAS,
               "thumbnails": str(thumbnails.directory), "state": state, "files": []}
    urns = store.urns
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for number in tqdm(numbers, desc="atlases", unit="atlas", file=sys.stderr, disable=not progress,
                           leave=False):
            start, stop = number * files.PER_ATLAS, min(count, (number + 1) * files.PER_ATLAS)
            kept = done.get(number)
            if kept is None or kept["rows"] != [start, stop]:
                data, missing = atlas_image([thumbnails.path(urns[row]) for row in range(start, stop)], pool)
                kept = {**files.save_file(index_dir, files.content_name("atlas", data, "jpg", number), data),
                        "number": number, "rows": [start, stop], "missing": missing}
            atlases["files"].append(kept)
            pending["atlases"] = atlases
            record()
    return atlases
