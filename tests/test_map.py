"""The collection map: make_map.py / siamese.map_build (layout, themes, atlases; resumable, incremental,
atomic) and its API (/api/map, /api/clusters, the pictures), over real stores, real indices and the
real UMAP. The page itself: tests/test_map_browser.py."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import webtest
from PIL import Image

import app as app_module
from app_support import call
from siamese import map_build, map_files
from siamese.collection import Collection
from siamese.index_build import IndexConfig, build_indices
from siamese.map_build import MapError, build_map
from siamese.map_files import COORDINATE, NO_YEAR, MapDamaged, open_map, read_map_manifest
from siamese.thumbnails import thumbnail_filename
from siamese.vector_store import VectorStore, VectorStoreWriter

ROOT = Path(__file__).resolve().parent.parent
THEMES = 8
PER_THEME = 40
DIM = 32


def themed(n_themes: int = THEMES, per_theme: int = PER_THEME, seed: int = 0, start: int = 0):
    """Well-separated themes (Gaussian blobs) with a metadata column naming each, each theme in its own
    years (theme k: 1950 + 3k .. 1952 + 3k), so that clusters, labels and counts can be checked."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((n_themes, DIM)) * 6
    truth = np.repeat(np.arange(n_themes), per_theme)
    vectors = (centres[truth] + rng.standard_normal((len(truth), DIM))).astype(np.float32)
    items = [{"urn": f"urn:map:{start + i}", "date": f"{1950 + 3 * theme + i % 3}",
              "year": 1950 + 3 * theme + i % 3, "path": f"images/{start + i}.jpg",
              "metadata": {"theme": f"theme {theme}", "note": f"note {i}"}}
             for i, theme in enumerate(truth.tolist())]
    return vectors, items, truth


@pytest.fixture(scope="module")
def themed_map(tmp_path_factory) -> dict:
    directory = tmp_path_factory.mktemp("themed")
    vectors, items, truth = themed()
    with VectorStoreWriter(directory / "vectors", "test-model", DIM) as writer:
        writer.append(vectors, items)
    store = VectorStore(directory / "vectors")
    build_indices(store, directory / "indices", IndexConfig(step_sizes=(10, 1)), verbose=False)
    manifest = build_map(directory / "vectors", directory / "indices", n_clusters=THEMES)
    return {"dir": directory, "truth": truth, "manifest": manifest, "vectors": vectors, "items": items}


def copy_of(themed_map: dict, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(themed_map["dir"], target)
    return target


def descriptors(directory: Path) -> np.ndarray:
    space, _ = map_build.map_space(VectorStore(directory / "vectors"), directory / "indices")
    return space


def test_the_layout_keeps_neighbours_near_and_the_themes_are_found(themed_map):
    from sklearn.manifold import trustworthiness
    from sklearn.metrics import adjusted_mutual_info_score

    directory = themed_map["dir"]
    collection_map = open_map(directory / "indices", VectorStore(directory / "vectors").years())
    places = np.column_stack([collection_map.x, collection_map.y]).astype(np.float64)
    space = descriptors(directory)
    assert trustworthiness(space, places, n_neighbors=10) >= 0.90
    assert trustworthiness(space, np.random.default_rng(0).random((len(space), 2)), n_neighbors=10) < 0.7
    truth = themed_map["truth"]
    assert adjusted_mutual_info_score(truth, collection_map.clusters) > 0.9
    assert adjusted_mutual_info_score(truth, np.random.default_rng(0).integers(0, THEMES, len(truth))) < 0.1
    # the layout fills the square: the longer side spans nearly 0..COORDINATE
    spans = places.max(axis=0) - places.min(axis=0)
    assert spans.max() > 0.9 * COORDINATE


def test_themes_are_labelled_from_the_metadata_with_representatives_and_counts(themed_map):
    manifest = themed_map["manifest"]
    info = manifest["clusters"]["info"]
    assert len(info) == THEMES
    assert sorted(cluster["label"] for cluster in info) == [f"theme: theme {k}" for k in range(THEMES)]
    sizes = [cluster["size"] for cluster in info]
    assert sizes == sorted(sizes, reverse=True)
    items, truth = themed_map["items"], themed_map["truth"]
    for cluster in info:
        assert len(cluster["representatives"]) == map_build.REPRESENTATIVES
        themes = {items[row]["metadata"]["theme"] for row in cluster["representatives"]}
        assert themes == {cluster["label"].removeprefix("theme: ")}  # "note" (all distinct) never names one
    app = webtest.TestApp(app_module.make_app(Collection(themed_map["dir"] / "vectors",
                                                          themed_map["dir"] / "indices")))
    answer = app.get("/api/clusters").json
    assert answer["count"] == len(truth) and answer["steps"] == [10, 1]
    years = [period["start"] for period in answer["periods"]["1"]]
    assert years == list(range(1950, 1950 + 3 * THEMES))
    for cluster in answer["clusters"]:
        theme = int(cluster["label"].split()[-1])
        counts = cluster["counts"]["1"]
        assert sum(counts) == cluster["size"] == PER_THEME
        # the theme's 3 years hold all of it: the stream of cluster shares rises and fades with it
        assert [years[i] for i, count in enumerate(counts) if count] == \
            [1950 + 3 * theme + k for k in range(3)]
        assert sum(cluster["counts"]["10"]) == cluster["size"]
    totals = np.sum([cluster["counts"]["1"] for cluster in answer["clusters"]], axis=0)
    assert totals.tolist() == [period["total"] for period in answer["periods"]["1"]]


def test_the_points_api_binary_json_pages_picks_and_masks_agree(themed_map):
    directory = themed_map["dir"]
    collection = Collection(directory / "vectors", directory / "indices")
    app = webtest.TestApp(app_module.make_app(collection))
    binary = app.get("/api/map?format=binary")
    n = len(themed_map["truth"])
    assert binary.content_type == "application/octet-stream" and binary.headers["X-Map-Count"] == str(n)
    assert len(binary.body) == 8 * n
    x, y, cluster = (np.frombuffer(binary.body[i * 2 * n:(i + 1) * 2 * n], "<u2") for i in range(3))
    year = np.frombuffer(binary.body[6 * n:], "<i2")
    assert year.tolist() == [item["year"] for item in themed_map["items"]]
    gzipped = call(app.app, "/api/map", "format=binary", headers={"Accept-Encoding": "gzip"})
    assert gzipped.headers["content-encoding"] == "gzip" and gzip.decompress(gzipped.body) == binary.body
    pages, url = [], "/api/map?limit=128"
    while url:
        page = app.get(url if url.startswith("/") else "/" + url).json
        pages.extend(page["points"])
        url = page["next"]
    assert [point["row"] for point in pages] == list(range(n))
    assert [(p["x"], p["y"], p["cluster"], p["year"]) for p in pages] == \
        list(zip(x.tolist(), y.tolist(), cluster.tolist(), year.tolist(), strict=True))
    assert [p["urn"] for p in pages] == [item["urn"] for item in themed_map["items"]]
    picked = app.get("/api/map?urn=urn:map:5&row=7&urn=urn:map:300").json["points"]
    assert [point["row"] for point in picked] == [7, 5, 300]
    mask = app.get("/api/map?format=mask&filter=theme:theme 3&filter=theme:theme 5")
    bits = np.unpackbits(np.frombuffer(mask.body, np.uint8), bitorder="little")[:n].astype(bool)
    expected = np.isin(themed_map["truth"], [3, 5])
    assert (bits == expected).all() and mask.headers["X-Map-Passing"] == str(expected.sum())
    # an entity tag: asked again with it, 304
    etag = binary.headers["ETag"]
    assert app.get("/api/map?format=binary", headers={"If-None-Match": etag}, status=304)


@pytest.mark.parametrize(("url", "status", "says"), [
    ("/api/map?format=svg", 400, "format must be one of"),
    ("/api/map?row=320", 400, "row must be a mapped row"),
    ("/api/map?row=%C2%B2", 400, "row must be a mapped row"),
    ("/api/map?urn=nope", 404, "not on the map"),
    ("/api/map?format=mask", 400, "needs filter"),
    ("/api/map?filter=theme:theme 1", 400, "goes with format=mask"),
    ("/api/map?format=mask&filter=colour:red", 400, "no column 'colour'"),
    ("/api/map?offset=-1", 400, "offset must be"),
    ("/api/map?limit=100000", 400, "limit must be"),
    ("/api/map?bogus=1", 400, "unknown parameter"),
    ("/api/clusters?x=1", 400, "unknown parameter"),
    ("/map/atlas/0.jpg", 404, "no such picture"),  # made without thumbnails: no atlases
])
def test_bad_requests_are_clear_json_errors(themed_map, url, status, says):
    app = webtest.TestApp(app_module.make_app(Collection(themed_map["dir"] / "vectors",
                                                          themed_map["dir"] / "indices")))
    answer = app.get(url, status=status)
    assert answer.json["status"] == status and says in answer.json["error"]


def test_without_a_map_the_api_says_how_to_make_one(tmp_path, themed_map):
    directory = copy_of(themed_map, tmp_path)
    for path in [*directory.glob("indices/map*")]:
        path.unlink()
    app = webtest.TestApp(app_module.make_app(Collection(directory / "vectors", directory / "indices")))
    for url in ("/api/map?format=binary", "/api/clusters", "/map/overview.png"):
        answer = app.get(url, status=404)
        assert "make_map.py" in answer.json["error"]
    assert "make_map.py" in app.get("/map").text  # the page says it too


def test_atlases_hold_every_thumbnail_in_its_cell_and_the_overview_is_framed(histogram_collection, tmp_path):
    source = histogram_collection
    directory = tmp_path / "h"
    shutil.copytree(source.vector_dir, directory / "vectors")
    shutil.copytree(source.index_dir, directory / "indices")
    manifest = build_map(directory / "vectors", directory / "indices", source.thumbnail_dir)
    atlases = manifest["atlases"]
    assert [atlas["rows"] for atlas in atlases["files"]] == [[0, len(source.urns)]]
    assert atlases["files"][0]["missing"] == 0
    app = webtest.TestApp(app_module.make_app(Collection(directory / "vectors", directory / "indices",
                                                          source.thumbnail_dir)))
    clusters = app.get("/api/clusters").json
    atlas_answer = app.get("/" + clusters["atlases"]["urls"][0])
    assert atlas_answer.headers["Cache-Control"].endswith("immutable")
    atlas = Image.open(io.BytesIO(atlas_answer.body)).convert("RGB")
    cell = clusters["atlases"]["cell"]
    assert atlas.size == (clusters["atlases"]["columns"] * cell, 2 * cell)  # 60 cells: two rows of 32
    for row in (0, 7, 45):  # each cell holds its own row's thumbnail (compared by mean colour)
        left, top = row % 32 * cell, row // 32 * cell
        sprite = np.asarray(atlas.crop((left, top, left + cell, top + cell)), dtype=float)
        thumbnail = Image.open(source.thumbnail_dir / thumbnail_filename(source.urns[row])).convert("RGB")
        thumbnail.thumbnail((cell, cell))
        inner = sprite[(cell - thumbnail.height) // 2:(cell - thumbnail.height) // 2 + thumbnail.height,
                       (cell - thumbnail.width) // 2:(cell - thumbnail.width) // 2 + thumbnail.width]
        expected = np.asarray(thumbnail, dtype=float).mean(axis=(0, 1))
        assert np.abs(inner.mean(axis=(0, 1)) - expected).max() < 12
    # images added later, run again without --thumbnails: the atlases go on from the same folder
    store = VectorStore(directory / "vectors")
    with VectorStoreWriter(directory / "vectors", store.model, store.n_dimensions) as writer:
        writer.append(np.asarray(store.vectors[:2]), [{**store.items[row], "urn": f"added {row}"}
                                                      for row in range(2)])
    build_indices(VectorStore(directory / "vectors"), directory / "indices", IndexConfig(step_sizes=(10, 1)),
                  verbose=False)
    again = build_map(directory / "vectors", directory / "indices")
    assert again["made"]["placed"] == 2
    assert [(atlas["rows"], atlas["missing"]) for atlas in again["atlases"]["files"]] == [([0, 62], 2)]
    # the server has not read the new map yet: the previous map's pictures are still there for it
    overview = Image.open(io.BytesIO(app.get("/" + clusters["overview"]).body))
    assert overview.size == (map_build.OVERVIEW, map_build.OVERVIEW)
    points = app.get("/api/map?limit=100").json["points"]
    pixels = np.asarray(overview.convert("RGB"))
    for point in points[:10]:  # every point is drawn where its x, y say
        px = round(point["x"] / COORDINATE * (map_build.OVERVIEW - 1))
        py = round(point["y"] / COORDINATE * (map_build.OVERVIEW - 1))
        assert pixels[py, px].tolist() != [24, 24, 24]


def append_twins(directory: Path, rows: list[int], vectors: np.ndarray, items: list[dict]) -> None:
    """New images, each a near copy of an existing row, and the indices built for them."""
    rng = np.random.default_rng(5)
    store = VectorStore(directory / "vectors")
    new_items = [{**items[row], "urn": f"urn:map:twin:{row}", "metadata": {"theme": "new", "note": "twin"}}
                 for row in rows]
    with VectorStoreWriter(directory / "vectors", store.model, DIM) as writer:
        writer.append(vectors[rows] + rng.standard_normal((len(rows), DIM)).astype(np.float32) * 1e-3,
                      new_items)
    build_indices(VectorStore(directory / "vectors"), directory / "indices", IndexConfig(step_sizes=(10, 1)),
                  verbose=False)


def test_new_images_are_placed_on_the_existing_map_without_moving_it(themed_map, tmp_path, monkeypatch):
    directory = copy_of(themed_map, tmp_path)
    years = VectorStore(directory / "vectors").years()
    before = open_map(directory / "indices", years)
    twins = [0, 45, 130, 250, 319]
    append_twins(directory, twins, themed_map["vectors"], themed_map["items"])

    def no_layout(*args, **kwargs):
        raise AssertionError("the whole collection was laid out again")

    monkeypatch.setattr(map_build, "umap_layout", no_layout)
    manifest = build_map(directory / "vectors", directory / "indices")
    assert manifest["made"]["placed"] == len(twins) and manifest["count"] == 320 + len(twins)
    after = open_map(directory / "indices", VectorStore(directory / "vectors").years())
    assert (after.x[:320] == before.x).all() and (after.y[:320] == before.y).all()
    assert (after.clusters[:320] == before.clusters).all()
    for new, twin in enumerate(twins, start=320):
        assert abs(int(after.x[new]) - int(after.x[twin])) < 0.03 * COORDINATE
        assert abs(int(after.y[new]) - int(after.y[twin])) < 0.03 * COORDINATE
        assert after.clusters[new] == after.clusters[twin]
    assert build_map(directory / "vectors", directory / "indices")["made"] == {"up_to_date": True}


def test_an_interrupted_build_resumes_and_the_served_map_stays_whole(themed_map, tmp_path, monkeypatch):
    directory = copy_of(themed_map, tmp_path)
    indices = directory / "indices"
    served = read_map_manifest(indices)
    calls = {"layout": 0}
    real_layout = map_build.umap_layout

    def counted_layout(*args, **kwargs):
        calls["layout"] += 1
        return real_layout(*args, **kwargs)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(map_build, "umap_layout", counted_layout)
    monkeypatch.setattr(map_build, "find_clusters", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_map(directory / "vectors", indices, n_clusters=5)  # other settings: laid out again
    on_disk = read_map_manifest(indices)
    assert on_disk["pending"]["layout"] and "clusters" not in on_disk["pending"]
    # readers see the old map, whole
    assert {key: value for key, value in on_disk.items() if key != "pending"} == served
    old = open_map(indices, VectorStore(directory / "vectors").years())
    assert len(old.manifest["clusters"]["info"]) == THEMES
    monkeypatch.undo()
    monkeypatch.setattr(map_build, "umap_layout", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    manifest = build_map(directory / "vectors", indices, n_clusters=5)
    assert calls["layout"] == 1 and "layout_seconds" not in manifest["made"]  # the layout was kept
    assert "pending" not in read_map_manifest(indices)
    remade = open_map(indices, VectorStore(directory / "vectors").years())
    assert len(remade.manifest["clusters"]["info"]) == 5
    names = {path.name for path in indices.glob("map-*")}
    # kept: the new map's files and the previous map's (a server may still serve it for a moment);
    # removed: anything else (the interrupted build's layout was taken up, so it is the new map's)
    kept = map_files.referenced_files(read_map_manifest(indices)) | map_files.referenced_files(served)
    assert names == kept
    monkeypatch.undo()
    build_map(directory / "vectors", indices, n_clusters=5, force=True)
    assert not map_files.referenced_files(served) & {path.name for path in indices.glob("map-*")}


def test_a_damaged_map_file_is_named_and_the_server_keeps_the_map_it_has(themed_map, tmp_path, monkeypatch,
                                                                        capsys):
    directory = copy_of(themed_map, tmp_path)
    indices = directory / "indices"
    collection = Collection(directory / "vectors", indices)
    assert collection.collection_map() is not None
    layout_file = indices / read_map_manifest(indices)["layout"]["file"]
    data = bytearray(layout_file.read_bytes())
    data[-3] ^= 0xFF
    layout_file.write_bytes(bytes(data))
    with pytest.raises(MapDamaged, match="does not match its checksum"):
        open_map(indices, VectorStore(directory / "vectors").years())
    manifest = read_map_manifest(indices)
    manifest["built"] = "touched"  # map.json replaced: the server looks again
    map_files.write_map_manifest(indices, manifest)
    monkeypatch.setattr("siamese.collection.MAP_CHECK_SECONDS", 0.0)
    assert collection.collection_map() is not None  # the map read before, still served
    assert "cannot be read" in capsys.readouterr().err
    verified = subprocess.run([sys.executable, "annoy_indexer.py", "verify", str(directory / "vectors"),
                               str(indices)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert verified.returncode == 1 and "damaged: the map" in verified.stdout and "--force" in verified.stdout
    done = run_make_map(directory / "vectors", indices)
    assert done.returncode == 2 and "does not match its checksum" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    repaired = run_make_map(directory / "vectors", indices, "--force", "--quiet")
    assert repaired.returncode == 0, repaired.stderr
    assert open_map(indices, VectorStore(directory / "vectors").years()).count == 320
    verified = subprocess.run([sys.executable, "annoy_indexer.py", "verify", str(directory / "vectors"),
                               str(indices)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    # layout, labels, centres, overview
    assert verified.returncode == 0 and "the map's 4 files match" in verified.stdout


def test_a_server_picks_up_a_map_made_while_it_runs(themed_map, tmp_path, monkeypatch):
    directory = copy_of(themed_map, tmp_path)
    for path in directory.glob("indices/map*"):
        path.unlink()
    monkeypatch.setattr("siamese.collection.MAP_CHECK_SECONDS", 0.0)
    app = webtest.TestApp(app_module.make_app(Collection(directory / "vectors", directory / "indices")))
    app.get("/api/clusters", status=404)
    shutil.copy(themed_map["dir"] / "indices" / "map.json", directory / "indices" / "map.json")
    for path in (themed_map["dir"] / "indices").glob("map-*"):
        shutil.copy(path, directory / "indices" / path.name)
    assert app.get("/api/clusters").json["count"] == 320


def run_make_map(*arguments: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "make_map.py", *map(str, arguments)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_the_cli_says_what_it_made_and_refuses_bad_input_in_one_line(themed_map, tmp_path):
    directory = copy_of(themed_map, tmp_path)
    done = run_make_map(directory / "vectors", directory / "indices", "--quiet")
    assert done.returncode == 0 and "up to date" in done.stdout
    for arguments, says in [
        ((directory / "vectors", tmp_path / "none"), "build the indices first"),
        ((directory / "vectors", directory / "indices", "--clusters", "0"), "--clusters must be"),
        ((directory / "vectors", directory / "indices", "--thumbnails", tmp_path / "none"), "no such folder"),
        ((tmp_path / "no-store", directory / "indices"), "no-store"),
    ]:
        failed = run_make_map(*arguments)
        assert failed.returncode == 2, failed.stderr
        assert says in failed.stderr and "Traceback" not in failed.stderr
    # indices older than the store: refused, nothing of the map changed
    before = (directory / "indices" / "map.json").read_bytes()
    vectors, items, _ = themed(1, 3, seed=3, start=1000)
    with VectorStoreWriter(directory / "vectors", "test-model", DIM) as writer:
        writer.append(vectors, items)
    failed = run_make_map(directory / "vectors", directory / "indices", "--quiet")
    assert failed.returncode == 2 and "annoy_indexer.py build first" in failed.stderr
    assert (directory / "indices" / "map.json").read_bytes() == before
    help_text = run_make_map("--help").stdout
    assert "--thumbnails" in help_text and "--force" in help_text


def test_default_clusters_grow_with_the_collection_within_bounds():
    assert map_build.default_clusters(1) == 1
    assert map_build.default_clusters(60) == 3
    assert map_build.default_clusters(7_572) == 39
    assert map_build.default_clusters(426_777) == map_build.MAX_CLUSTERS


def test_years_outside_int16_are_unknown_on_the_map(tmp_path):
    years = np.array([1950, -40000, 40000, 2024])
    places = np.random.default_rng(0).random((4, 2)).astype(np.float32)
    index_dir = tmp_path
    manifest = {"format": map_files.FORMAT, "version": map_files.VERSION, "count": 4,
                "layout": map_files.save_array(index_dir, "layout", places),
                "clusters": {"labels": map_files.save_array(index_dir, "clusters", np.zeros(4, np.uint16)),
                             "info": [{"id": 0}]}}
    map_files.write_map_manifest(index_dir, manifest)
    collection_map = open_map(index_dir, years)
    assert collection_map.years.tolist() == [1950, NO_YEAR, NO_YEAR, 2024]
    assert collection_map.periods([10])["10"][0]["start"] == 1950
    assert json.loads(json.dumps(collection_map.point(1, "u")))["year"] is None


def test_the_map_is_refused_when_no_indices_were_built(tmp_path):
    vectors, items, _ = themed(2, 5)
    with VectorStoreWriter(tmp_path / "vectors", "test-model", DIM) as writer:
        writer.append(vectors, items)
    (tmp_path / "indices").mkdir()
    with pytest.raises(MapError, match="no indices"):
        build_map(tmp_path / "vectors", tmp_path / "indices")
