"""annoy_indexer.py on small synthetic stores: real Annoy files in tmp_path, results against brute force."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from annoy import AnnoyIndex

from annoy_indexer import METRICS, AnnoyIndexer, SearchSettings, exact_distances, read_manifest
from siamese.index_build import IndexConfig, build_indices
from siamese.index_dir import read_projection, read_transform
from siamese.vector_store import VectorStore, VectorStoreWriter
from stores import GAP_YEARS, LONELY_YEAR, make_store, synthetic

pytestmark = pytest.mark.fast  # no model, no browser: make test-fast

ROOT = Path(__file__).resolve().parent.parent


def descriptors_of(store: VectorStore, index_dir: Path) -> np.ndarray:
    """The stored vectors under the transform saved in `index_dir`, applied here, not read from the
    descriptors the build wrote: what the search ranks must be exactly this."""
    transform = read_transform(index_dir, read_manifest(index_dir)["transform"])
    return transform.apply(np.asarray(store.vectors))


def brute_force(store: VectorStore, row: int, rows: np.ndarray, n: int, metric: str,
                index_dir: Path) -> tuple[list, np.ndarray]:
    rows = rows[rows != row]
    vectors = descriptors_of(store, index_dir)
    distances = exact_distances(vectors[rows], vectors[row], metric)
    order = np.argsort(-distances if metric == "dot" else distances, kind="stable")[:n]
    return [store.items[r]["urn"] for r in rows[order]], distances[order]


def period_rows(store: VectorStore, start: int, end: int) -> np.ndarray:
    years = store.years()
    return np.flatnonzero((years >= start) & (years <= end))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> AnnoyIndexer:
    """One built index directory shared by the tests that only read it."""
    base = tmp_path_factory.mktemp("built")
    indexer = AnnoyIndexer(make_store(base / "vectors"), base / "indices", verbose=False)
    indexer.build()
    return indexer


def files_of(directory: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in directory.iterdir() if path.name != ".lock"}


# ------------------------------------------------------------------------------------------- building

def test_build_writes_real_annoy_files_and_the_rows_of_their_items(built):
    manifest = read_manifest(built.index_dir)
    store = VectorStore(built.vector_dir)
    assert (manifest["metric"], manifest["model"]) == ("euclidean", "test-model")
    assert manifest["n_dimensions"] == 16
    assert (manifest["descriptor"], manifest["descriptor_dimensions"]) == ("whitened", 16)  # the defaults
    dimensions = read_projection(built.index_dir, "euclidean", manifest["projection"]).dimensions(16)
    assert dimensions == manifest["index_dimensions"] == 16  # fewer than 128: indexed as they are
    assert manifest["store_count"] == len(store) and manifest["n_trees"] >= 1
    years = store.years()
    assert set(manifest["indices"]) == {"all"} | {f"10/{start}" for start in (1940, 1950, 1960)} | {
        f"1/{year}" for year in range(1948, 1962)}
    for key, entry in manifest["indices"].items():
        if key.startswith("1/") and int(key[2:]) in GAP_YEARS:
            assert entry["count"] == 0 and "annoy" not in entry  # empty period: no index needed
            continue
        rows = np.load(built.index_dir / entry["rows"])
        annoy = AnnoyIndex(dimensions, "euclidean")
        annoy.load(str(built.index_dir / entry["annoy"]))
        assert annoy.get_n_items() == len(rows) == entry["count"] > 0
        if key == "all":
            assert rows.tolist() == list(range(len(store)))
        else:
            step, start = map(int, key.split("/"))
            assert rows.tolist() == np.flatnonzero((years >= start) & (years < start + step)).tolist()
    assert not [path for path in built.index_dir.iterdir() if path.name.endswith(".tmp")]


def test_a_second_build_finds_everything_up_to_date(built):
    before = files_of(built.index_dir)
    report = built.build()
    assert report["built"] == 0 and report["up_to_date"] == 1 + 3 + 12 and report["empty"] == 2
    assert files_of(built.index_dir).keys() == before.keys()


def test_the_first_query_builds_a_missing_index_dir(tmp_path):
    indexer = AnnoyIndexer(make_store(tmp_path / "vectors", n=120), tmp_path / "indices", verbose=False)
    assert read_manifest(tmp_path / "indices") is None
    result = indexer.query_all("urn:test:3")
    assert read_manifest(tmp_path / "indices")["store_count"] == 120
    assert set(result["steps"]) == {"10", "1"}


# ------------------------------------------------------------------------------------------- querying

def test_query_all_returns_the_documented_structure(built):
    urn = "urn:test:7"
    result = built.query_all(urn, n_nns=4)
    assert list(result) == ["urn", "metadata", "steps"]
    store = VectorStore(built.vector_dir)
    item = store.items[store.row_of(urn)]
    assert result["urn"] == urn
    assert result["metadata"] == {"date": item["date"], "year": item["year"], "path": item["path"],
                                  "title": item["metadata"]["title"], "paper": "Le Temps"}
    assert list(result["steps"]) == ["10", "1"]
    for step, periods in result["steps"].items():
        step = int(step)
        starts = [period["start"] for period in periods]
        assert starts == list(range(starts[0], starts[-1] + 1, step))  # chronological, none skipped
        assert starts[0] <= 1948 and periods[-1]["end"] >= 1961
        for period in periods:
            assert list(period) == ["period", "start", "end", "neighbours"]
            assert period["end"] == period["start"] + step - 1
            assert period["period"] == (str(period["start"]) if step == 1
                                        else f"{period['start']}-{period['end']}")
            neighbours = period["neighbours"]
            assert len(neighbours) <= 4
            distances = [neighbour["distance"] for neighbour in neighbours]
            assert distances == sorted(distances)
            for neighbour in neighbours:
                assert list(neighbour)[:5] == ["urn", "distance", "date", "year", "path"]
                assert isinstance(neighbour["distance"], float) and isinstance(neighbour["year"], int)
                assert neighbour["urn"] != urn
                assert period["start"] <= neighbour["year"] <= period["end"]
                assert neighbour["title"].startswith("image ") and neighbour["paper"] == "Le Temps"
    by_label = {period["period"]: period for period in result["steps"]["1"]}
    for year in GAP_YEARS:
        assert by_label[str(year)]["neighbours"] == []
    assert len(by_label["1950"]["neighbours"]) == 4
    assert json.loads(json.dumps(result)) == result


def test_an_item_alone_in_its_period_has_no_neighbours_there(built):
    store = VectorStore(built.vector_dir)
    [row] = np.flatnonzero(store.years() == LONELY_YEAR)
    result = built.query_all(store.items[row]["urn"], n_nns=3)
    [lonely] = [period for period in result["steps"]["1"] if period["start"] == LONELY_YEAR]
    assert lonely["neighbours"] == []
    [decade] = [period for period in result["steps"]["10"] if period["start"] == 1950]
    assert len(decade["neighbours"]) == 3


def test_vectors_flag_adds_the_stored_vectors(built):
    store = VectorStore(built.vector_dir)
    result = built.query_all("urn:test:11", n_nns=2, vectors=True)
    assert result["vector"] == store.vectors[store.row_of("urn:test:11")].tolist()
    neighbours = [nb for period in result["steps"]["10"] for nb in period["neighbours"]]
    assert neighbours
    for neighbour in neighbours:
        assert neighbour["vector"] == store.vectors[store.row_of(neighbour["urn"])].tolist()
        assert len(neighbour["vector"]) == 16 and isinstance(neighbour["vector"][0], float)
    json.dumps(result)
    assert "vector" not in built.query_all("urn:test:11", n_nns=2)


def test_n_nns_single_value_or_one_per_step(built):
    def counts(result: dict, step: str) -> set[int]:
        return {len(period["neighbours"]) for period in result["steps"][step] if period["neighbours"]}

    for single in (3, [3], (3,)):
        result = built.query_all("urn:test:20", n_nns=single)
        assert counts(result, "10") == {3} and 3 in counts(result, "1")
    result = built.query_all("urn:test:20", n_nns=[2, 5])
    assert counts(result, "10") == {2} and max(counts(result, "1")) == 5


@pytest.mark.parametrize("n_nns", [[1, 2, 3], [], [0], [5, 0], [2.5], "5", True, -1, None])
def test_bad_n_nns_is_a_value_error_saying_what_is_allowed(built, n_nns):
    with pytest.raises(ValueError, match="n_nns must be a positive whole number"):
        built.query_all("urn:test:1", n_nns=n_nns)


def test_query_whole_collection_and_one_step(built):
    store = VectorStore(built.vector_dir)
    neighbours = built.query("urn:test:5", n=6)
    row = store.row_of("urn:test:5")
    expected, distances = brute_force(store, row, np.arange(len(store)), 6, "euclidean", built.index_dir)
    assert [neighbour["urn"] for neighbour in neighbours] == expected
    np.testing.assert_allclose([neighbour["distance"] for neighbour in neighbours], distances, rtol=1e-5)
    periods = built.query("urn:test:5", n=2, step=10)
    assert periods == built.query_all("urn:test:5", n_nns=2)["steps"]["10"]


def test_unknown_urn_is_a_key_error_naming_it(built):
    with pytest.raises(KeyError, match="urn:nope:42"):
        built.query_all("urn:nope:42")
    with pytest.raises(KeyError, match="urn:nope:42"):
        built.query("urn:nope:42", step=1)


def test_a_step_that_was_not_asked_for_is_a_value_error_listing_the_steps(built):
    with pytest.raises(ValueError, match="step must be one of .*10, 1"):
        built.query("urn:test:1", step=5)
    with pytest.raises(ValueError, match="positive whole number"):
        built.query("urn:test:1", n=0)


# ------------------------------------------------------------------------------------------- parameters

def test_parameters_are_validated_with_clear_messages(tmp_path):
    store = make_store(tmp_path / "vectors", n=50)
    with pytest.raises(ValueError, match="metric must be one of 'angular', 'euclidean', 'manhattan', 'dot'"):
        AnnoyIndexer(store, tmp_path / "i", metric="cosine")
    with pytest.raises(ValueError, match=r"n_dimensions=512 but .* holds 16-d vectors"):
        AnnoyIndexer(store, tmp_path / "i", n_dimensions=512)
    assert AnnoyIndexer(store, tmp_path / "i", n_dimensions=16).n_dimensions == 16
    for steps in ([0], [10, "1"], [1.5], [10, 10], []):
        with pytest.raises(ValueError, match="step"):
            AnnoyIndexer(store, tmp_path / "i", step_sizes=steps)
    for name in ("n_trees", "search_k", "index_dimensions"):
        with pytest.raises(ValueError, match=f"{name} must be a positive whole number"):
            AnnoyIndexer(store, tmp_path / "i", **{name: 0})
    with pytest.raises(ValueError, match="not a vector store"):
        AnnoyIndexer(tmp_path / "missing", tmp_path / "i")


# ------------------------------------------------------------------------------------------- results

SEARCHES = {
    # 16-d descriptors indexed as they are, and periods this small searched exhaustively
    "exact": {"index_dimensions": 16},
    "annoy": {"index_dimensions": 16, "brute_force_max_rows": 0, "scan_below": 0},  # trees on the descriptors
    "projected scan": {"index_dimensions": 6, "brute_force_max_rows": 0},  # a 6-d PCA, scanned
    "projected annoy": {"index_dimensions": 6, "brute_force_max_rows": 0, "scan_below": 0},
}


def configured(vector_dir: Path, index_dir: Path, metric: str, search: str, **overrides) -> AnnoyIndexer:
    settings = {**SEARCHES[search], **overrides}
    knobs = [name for name in ("brute_force_max_rows", "scan_below") if name in settings]
    search_settings = SearchSettings(**{name: settings.pop(name) for name in knobs})
    return AnnoyIndexer(vector_dir, index_dir, metric=metric, verbose=False, search_settings=search_settings,
                        **settings)


@pytest.mark.parametrize("search", list(SEARCHES))
@pytest.mark.parametrize("metric", METRICS)
def test_every_metric_ranks_like_brute_force(tmp_path, metric, search):
    store_dir = make_store(tmp_path / "vectors", n=300, seed=3)
    indexer = configured(store_dir, tmp_path / "indices", metric, search)
    store = VectorStore(store_dir)
    hits = total = 0
    for row in range(0, len(store), 15):
        urn = store.items[row]["urn"]
        whole = {"start": 0, "end": 9999, "neighbours": indexer.query(urn, n=5)}
        for periods in [[whole], *indexer.query_all(urn, n_nns=5)["steps"].values()]:
            for period in periods:
                rows = period_rows(store, period["start"], period["end"])
                expected, distances = brute_force(store, row, rows, 5, metric, indexer.index_dir)
                found = period["neighbours"]
                assert len(found) == len(expected)
                got = [neighbour["distance"] for neighbour in found]
                assert got == sorted(got, reverse=metric == "dot")
                for neighbour in found:  # reported distances are the exact ones
                    vectors = descriptors_of(store, indexer.index_dir)
                    found_row = store.row_of(neighbour["urn"])
                    exact = exact_distances(vectors[[found_row]], vectors[row], metric)[0]
                    assert neighbour["distance"] == pytest.approx(float(exact), rel=1e-4, abs=1e-5)
                hits += len(set(expected) & {neighbour["urn"] for neighbour in found})
                total += len(expected)
    minimum = 1.0 if search == "exact" else 0.95
    assert hits / total >= minimum, f"recall {hits / total:.3f} for {metric} ({search})"


def test_recall_at_10_on_a_clustered_collection_is_at_least_099(tmp_path):
    """The projection's machinery on raw vectors whose clusters live in a few directions (whitening
    spreads them over all: bench/demo_recall.py measures the whitened descriptors of real images)."""
    store_dir = make_store(tmp_path / "vectors", n=3000, dim=48, seed=5)
    store = VectorStore(store_dir)
    for search in ("projected scan", "projected annoy"):
        indexer = configured(store_dir, tmp_path / search, "euclidean", search,
                             index_dimensions=12, descriptor="raw")
        hits = total = 0
        for row in range(0, len(store), 60):
            urn = store.items[row]["urn"]
            result = indexer.query_all(urn, n_nns=10)
            sections = [*result["steps"]["10"], *result["steps"]["1"],
                        {"start": 0, "end": 9999, "neighbours": indexer.query(urn, n=10)}]
            for period in sections:
                expected, _ = brute_force(store, row, period_rows(store, period["start"], period["end"]), 10,
                                          "euclidean", indexer.index_dir)
                hits += len(set(expected) & {neighbour["urn"] for neighbour in period["neighbours"]})
                total += len(expected)
        assert hits / total >= 0.99, f"recall@10 {hits / total:.4f} ({search})"


# ------------------------------------------------------------------------------------------- maintenance

def test_appended_rows_rebuild_only_the_indices_they_change(tmp_path):
    store_dir = make_store(tmp_path / "vectors")
    indexer = AnnoyIndexer(store_dir, tmp_path / "indices", verbose=False)
    indexer.build()
    before = read_manifest(tmp_path / "indices")["indices"]
    store = VectorStore(store_dir)
    twin = store.vectors[store.row_of("urn:test:0")] + np.float32(1e-3)
    vectors, items = synthetic(3, 16, seed=9, first_year=1956, last_year=1956, start=1000)
    vectors[0] = twin
    items[2].update(year=1964, date="1964")  # a new year: the timeline grows to 1964
    with VectorStoreWriter(store_dir, "test-model", 16) as writer:
        writer.append(vectors, items)

    fresh = AnnoyIndexer(store_dir, tmp_path / "indices", verbose=False)
    report = fresh.build()
    after = read_manifest(tmp_path / "indices")["indices"]
    changed = {key for key in after if before.get(key, {}).get("fingerprint") != after[key]["fingerprint"]}
    assert changed == {"all", "10/1950", "1/1956", "10/1960", "1/1962", "1/1963", "1/1964"}
    assert (report["built"], report["empty"]) == (5, 4)  # 1952, 1953 and the new 1962, 1963 are empty
    for key in set(before) - changed:
        assert after[key] == before[key]
        assert (tmp_path / "indices" / after[key].get("annoy", "index.json")).exists()

    neighbours = fresh.query("urn:test:0", n=1)
    assert neighbours[0]["urn"] == "urn:test:1000"
    assert fresh.query_all("urn:test:1002")["steps"]["1"][-1]["period"] == "1964"


def test_a_stale_index_dir_is_rebuilt_by_the_first_query_and_a_current_one_is_not(tmp_path):
    store_dir = make_store(tmp_path / "vectors")
    AnnoyIndexer(store_dir, tmp_path / "indices", verbose=False).build()
    before = files_of(tmp_path / "indices")
    assert AnnoyIndexer(store_dir, tmp_path / "indices", verbose=False).query("urn:test:1", n=2)
    assert files_of(tmp_path / "indices") == before  # not a file written, not even the manifest
    vectors, items = synthetic(1, 16, seed=4, start=5000)
    with VectorStoreWriter(store_dir, "test-model", 16) as writer:
        writer.append(vectors, items)
    indexer = AnnoyIndexer(store_dir, tmp_path / "indices", verbose=False)
    assert indexer.query_all("urn:test:5000")["urn"] == "urn:test:5000"
    assert read_manifest(tmp_path / "indices")["store_count"] == 401


def test_an_interrupted_build_resumes_keeping_what_was_finished(tmp_path):
    store_dir = make_store(tmp_path / "vectors")
    indexer = AnnoyIndexer(store_dir, tmp_path / "indices", verbose=False)
    calls = []

    def interrupt_after_five(key: str) -> None:  # Ctrl-C while the sixth index is being written
        calls.append(key)
        if len(calls) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_indices(VectorStore(store_dir), tmp_path / "indices", IndexConfig(), verbose=False,
                      on_index_written=interrupt_after_five)
    interrupted = read_manifest(tmp_path / "indices")
    recorded = interrupted["pending"]["indices"]  # written, but not yet what readers see
    assert set(calls) <= set(recorded) and interrupted["indices"] == {} and interrupted["complete"] == {}
    kept = {key: recorded[key] for key in calls}
    report = indexer.build()
    assert report["built"] == 16 - len(calls)
    manifest = read_manifest(tmp_path / "indices")
    assert {key: manifest["indices"][key] for key in calls} == kept and "pending" not in manifest
    assert indexer.query_all("urn:test:3")["steps"]["10"]


def test_readers_see_the_previous_generation_until_a_build_is_done(tmp_path):
    """A server started while a build refits the projection (or adds rows) serves the complete set
    built before, never a mixture and never "no indices"."""
    store_dir = make_store(tmp_path / "vectors", n=300, dim=16)
    config = IndexConfig(index_dimensions=6)
    build_indices(VectorStore(store_dir), tmp_path / "indices", config, verbose=False)
    before = read_manifest(tmp_path / "indices")
    vectors, items = synthetic(700, 16, seed=8, start=300)  # 1,000 rows: more than twice the fit's 300
    with VectorStoreWriter(store_dir, "test-model", 16) as writer:
        writer.append(vectors, items)
    seen = []

    def look(key: str) -> None:
        manifest = read_manifest(tmp_path / "indices")
        seen.append((manifest["indices"], manifest["projection"], manifest["complete"]))

    report = build_indices(VectorStore(store_dir), tmp_path / "indices", config, verbose=False,
                           on_index_written=look)
    assert report.built > 1 and seen
    assert all(view == (before["indices"], before["projection"], before["complete"]) for view in seen)
    after = read_manifest(tmp_path / "indices")
    assert after["projection"]["fitted_on"] == 1000 != before["projection"]["fitted_on"]
    assert AnnoyIndexer(store_dir, tmp_path / "indices", verbose=False).query("urn:test:999", n=3)


def test_deleted_index_files_are_rebuilt_alone(tmp_path):
    store_dir = make_store(tmp_path / "vectors")
    indexer = AnnoyIndexer(store_dir, tmp_path / "indices", verbose=False)
    indexer.build()
    manifest = read_manifest(tmp_path / "indices")
    (tmp_path / "indices" / manifest["indices"]["1/1950"]["annoy"]).unlink()
    del manifest["indices"]["1/1955"]
    (tmp_path / "indices" / "index.json").write_text(json.dumps(manifest))
    before = files_of(tmp_path / "indices")
    report = indexer.build()
    assert report["built"] == 2
    after = files_of(tmp_path / "indices")
    untouched = [name for name in before if not name.startswith(("step1_1950.", "step1_1955.", "index.json"))]
    assert all(after[name] == before[name] for name in untouched)
    assert indexer.query_all("urn:test:3", n_nns=1)


def test_another_metric_on_the_same_index_dir_is_refused_and_nothing_is_deleted(tmp_path):
    store_dir = make_store(tmp_path / "vectors")
    AnnoyIndexer(store_dir, tmp_path / "indices", verbose=False).build()
    before = files_of(tmp_path / "indices")
    angular = AnnoyIndexer(store_dir, tmp_path / "indices", metric="angular", verbose=False)
    with pytest.raises(ValueError, match="metric='euclidean', not metric='angular'"):
        angular.build()
    with pytest.raises(ValueError, match="metric='euclidean'"):
        angular.query_all("urn:test:1")
    with pytest.raises(ValueError, match="n_trees=5"):
        AnnoyIndexer(store_dir, tmp_path / "indices", n_trees=5, verbose=False).build()
    assert files_of(tmp_path / "indices") == before
    angular.build(force=True)
    assert read_manifest(tmp_path / "indices")["metric"] == "angular"
    assert angular.query_all("urn:test:1")["steps"]["10"]
    # replaced, not left over; the descriptors do not depend on the metric: written again, same content
    kept = set(before) - {"index.json"} & set(files_of(tmp_path / "indices"))
    assert kept and all(name.startswith(("transform.", "descriptors.")) for name in kept)


def test_another_model_in_the_store_is_refused(tmp_path):
    store_dir = make_store(tmp_path / "vectors")
    AnnoyIndexer(store_dir, tmp_path / "indices", verbose=False).build()
    other = make_store(tmp_path / "other", n=50)
    manifest = json.loads((other / "store.json").read_text())
    (other / "store.json").write_text(json.dumps(dict(manifest, model="another-model")))
    with pytest.raises(ValueError, match="model='test-model', not model='another-model'"):
        AnnoyIndexer(other, tmp_path / "indices", verbose=False).build()


# ------------------------------------------------------------------------------------------- command line

def cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "annoy_indexer.py"), *map(str, arguments)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_cli_builds_and_queries(tmp_path):
    store_dir = make_store(tmp_path / "vectors", n=150)
    built = cli("build", store_dir, tmp_path / "indices", "--steps", "10", "1", "--trees", "5", "--quiet")
    assert built.returncode == 0, built.stderr
    assert "indices built" in built.stdout
    assert read_manifest(tmp_path / "indices")["n_trees"] == 5
    queried = cli("query", store_dir, tmp_path / "indices", "urn:test:2", "--nns", "3")
    assert queried.returncode == 0, queried.stderr
    result = json.loads(queried.stdout)
    assert result["urn"] == "urn:test:2" and set(result["steps"]) == {"10", "1"}
    one_step = json.loads(cli("query", store_dir, tmp_path / "indices", "urn:test:2", "--step", "10",
                              "--vectors").stdout)
    assert set(one_step["steps"]) == {"10"} and len(one_step["vector"]) == 16
    whole = json.loads(cli("query", store_dir, tmp_path / "indices", "urn:test:2", "--step", "all",
                           "--nns", "4").stdout)
    expected = AnnoyIndexer(store_dir, tmp_path / "indices", verbose=False).query("urn:test:2", n=4)
    assert whole["steps"]["all"][0]["neighbours"] == expected
    table = cli("query", store_dir, tmp_path / "indices", "urn:test:2", "--step", "10", "--nns", "2",
                "--format", "table").stdout.splitlines()
    assert table[0].split() == ["period", "urn", "distance"]
    rows = [line.split() for line in table[1:]]
    for period in one_step["steps"]["10"]:  # every period's neighbours, in order, or "no other images"
        mine = [row for row in rows if row[0] == period["period"]]
        if period["neighbours"]:
            assert [(row[1], float(row[2])) for row in mine] == [
                (neighbour["urn"], pytest.approx(neighbour["distance"], abs=1e-4))
                for neighbour in period["neighbours"][:2]]
        else:
            assert mine == [[period["period"], "(no", "other", "images)"]]
    assert cli("--help").returncode == 0


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    store_dir = make_store(tmp_path / "vectors", n=60)
    assert cli("build", store_dir, tmp_path / "indices", "--quiet").returncode == 0
    for arguments in [("build", tmp_path / "missing", tmp_path / "indices"),
                      ("query", store_dir, tmp_path / "indices", "urn:nope:1"),
                      ("build", store_dir, tmp_path / "indices", "--metric", "cosine"),
                      ("build", store_dir, tmp_path / "indices", "--metric", "angular"),
                      ("query", store_dir, tmp_path / "indices", "urn:test:1", "--step", "7"),
                      ("query", store_dir, tmp_path / "indices", "urn:test:1", "--nns", "0"),
                      ("query", store_dir, tmp_path / "indices", "urn:test:1", "--nns", "x"),
                      ("build", store_dir, tmp_path / "indices", "--steps", "0")]:
        done = cli(*arguments)
        assert done.returncode == 2, (arguments, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, (arguments, done.stderr)
        assert "Traceback" not in done.stderr and done.stderr.startswith("annoy_indexer.py")
        assert "error: " in done.stderr
    assert "urn:nope:1" in cli("query", store_dir, tmp_path / "indices", "urn:nope:1").stderr
    unbuilt = cli("query", store_dir, tmp_path / "indices", "urn:test:1", "--step", "7").stderr
    assert "no indices for step 7" in unbuilt and "--steps 10 7 1" in unbuilt and "None" not in unbuilt
    assert "'all' (the whole collection)" in cli("query", store_dir, tmp_path / "indices", "urn:test:1",
                                                "--step", "decade").stderr


def test_threads_can_share_an_indexer_from_its_first_query(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    indexer = AnnoyIndexer(make_store(tmp_path / "vectors", n=200), tmp_path / "indices", verbose=False)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: indexer.query_all(f"urn:test:{i % 3}", n_nns=2), range(12)))
    assert all(result == results[i % 3] for i, result in enumerate(results))
    assert read_manifest(tmp_path / "indices")["store_count"] == 200


def test_an_empty_store_is_refused_in_words_not_by_numpy(tmp_path):
    store_dir = tmp_path / "vectors"
    VectorStoreWriter(store_dir, "test-model", 16).close()
    done = subprocess.run([sys.executable, str(ROOT / "annoy_indexer.py"), "build", str(store_dir),
                           str(tmp_path / "indices")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "Mean of empty" not in done.stderr
    assert done.stderr.splitlines() == [
        f"annoy_indexer.py: error: {store_dir} holds no images yet: nothing to index; extract some first "
        f"with: python extract_vectors.py METADATA_CSV {store_dir}"]
