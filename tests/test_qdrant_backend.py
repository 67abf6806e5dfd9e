"""The Qdrant index backend against qdrant-client's local mode: the same client calls a server gets.

Local mode searches exactly (brute force), so where Qdrant gives the candidates the answers must be
exactly the brute-force ones; the Annoy backend over the same store is held to recall@10 >= 0.99.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import qdrant_client
import webtest
from test_annoy_indexer import brute_force, descriptors_of, period_rows

from annoy_indexer import AnnoyIndexer
from app import Collection, make_app
from conftest import ROOT
from siamese import qdrant_index
from siamese.index_dir import read_manifest
from siamese.projection import exact_distances
from siamese.search import SearchSettings
from siamese.vector_store import VectorStore, VectorStoreWriter
from stores import LONELY_YEAR, make_store, synthetic

pytestmark = pytest.mark.fast
EVERY_PERIOD = SearchSettings(brute_force_max_rows=0)  # every period's candidates from Qdrant


def qdrant_indexer(store_dir: Path, index_dir: Path, qdrant_dir: Path, **kwargs) -> AnnoyIndexer:
    return AnnoyIndexer(store_dir, index_dir, qdrant_path=qdrant_dir, verbose=False,
                        search_settings=kwargs.pop("search_settings", EVERY_PERIOD), **kwargs)


def sections(indexer: AnnoyIndexer, urn: str, n: int) -> list[dict]:
    result = indexer.query_all(urn, n_nns=n)
    return [{"start": 0, "end": 9999, "neighbours": indexer.query(urn, n=n)},
            *[period for periods in result["steps"].values() for period in periods]]


class CountingCalls:
    """Counts a qdrant-client method's calls (the client is the real one; only counted)."""

    def __init__(self, client, name: str) -> None:
        self.method = getattr(client, name)
        self.calls: list[tuple[tuple, dict]] = []
        self.fail_after: int | None = None

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.fail_after is not None and len(self.calls) > self.fail_after:
            raise KeyboardInterrupt("stopped by the test")
        return self.method(*args, **kwargs)


@pytest.mark.parametrize("descriptor", ["whitened", "raw"])
@pytest.mark.parametrize("metric", ["euclidean", "angular", "dot", "manhattan"])
def test_answers_are_the_exact_ones_and_annoy_backend_agrees(tmp_path, metric, descriptor):
    store_dir = make_store(tmp_path / "vectors", n=500, dim=24, seed=4)
    store = VectorStore(store_dir)
    qdrant = qdrant_indexer(store_dir, tmp_path / "q", tmp_path / "qdrant", metric=metric,
                            descriptor=descriptor)
    annoy = AnnoyIndexer(store_dir, tmp_path / "a", metric=metric, descriptor=descriptor, verbose=False)
    qdrant.build()
    annoy.build()
    assert read_manifest(tmp_path / "q")["backend"] == "qdrant"
    assert not list((tmp_path / "q").glob("*.ann")) and list((tmp_path / "a").glob("*.ann"))
    hits = {"qdrant": 0, "annoy": 0}
    total = 0
    vectors = descriptors_of(store, qdrant.index_dir)
    for row in range(0, len(store), 25):
        urn = store.items[row]["urn"]
        for found, other in zip(sections(qdrant, urn, 10), sections(annoy, urn, 10), strict=True):
            assert (found["start"], found["end"]) == (other["start"], other["end"])
            rows = period_rows(store, found["start"], found["end"])
            expected, distances = brute_force(store, row, rows, 10, metric, qdrant.index_dir)
            got = [neighbour["urn"] for neighbour in found["neighbours"]]
            assert len(got) == len(expected)
            # local mode is exact: the same rows, the same distances (ties may swap)
            assert [neighbour["distance"] for neighbour in found["neighbours"]] == pytest.approx(
                distances.tolist(), rel=1e-4, abs=1e-5)
            for neighbour in found["neighbours"]:
                exact = exact_distances(vectors[[store.row_of(neighbour["urn"])]], vectors[row], metric)[0]
                assert neighbour["distance"] == pytest.approx(float(exact), rel=1e-4, abs=1e-5)
            hits["qdrant"] += len(set(expected) & set(got))
            hits["annoy"] += len(set(expected) & {neighbour["urn"] for neighbour in other["neighbours"]})
            total += len(expected)
    assert total > 500
    assert hits["qdrant"] / total >= 0.999, hits
    assert hits["annoy"] / total >= 0.99, hits


def test_one_batch_call_per_search_with_one_filtered_query_per_period(tmp_path):
    store_dir = make_store(tmp_path / "vectors", n=400, dim=16)
    indexer = qdrant_indexer(store_dir, tmp_path / "q", tmp_path / "qdrant")
    indexer.build()
    core = indexer.collection().core
    counting = CountingCalls(core.qdrant.client, "query_batch_points")
    core.qdrant.client.query_batch_points = counting
    try:
        lonely = next(item["urn"] for item in VectorStore(store_dir).items if item["year"] == LONELY_YEAR)
        result = indexer.query_all(lonely, n_nns=[5])
    finally:
        del core.qdrant.client.query_batch_points
    assert len(counting.calls) == 1
    requests = counting.calls[0][1]["requests"]
    filters = [request.filter.must for request in requests]
    # every period but those of at most 2n + 1 images (answered exactly here)
    assert len(requests) == sum(len(index.rows) > 11 for key in ("10", "1") for index in core.indices[key])
    assert [request.limit for request in requests] == [11] * len(requests)
    fields = sorted({condition.key for must in filters for condition in must})
    assert fields == ["period_10", "row", "year"]
    assert all(any(c.key == "row" and c.range.lt == 400 for c in must) for must in filters)
    # the lonely year is answered with nobody (the query is its only image), without asking Qdrant
    lonely_period = next(p for p in result["steps"]["1"] if p["start"] == LONELY_YEAR)
    assert lonely_period["neighbours"] == []
    assert not any(c.key == "year" and c.match.value == LONELY_YEAR for must in filters for c in must)
    assert all(len(period["neighbours"]) == min(5, len(index.rows) - (period["start"] <= LONELY_YEAR <=
                                                                       period["end"]))
               for key in ("10", "1") for period, index in zip(result["steps"][key], core.indices[key],
                                                               strict=True))


def test_payload_fields_and_a_new_step_size_added_later(tmp_path):
    store_dir = make_store(tmp_path / "vectors", n=300, dim=16)
    indexer = qdrant_indexer(store_dir, tmp_path / "q", tmp_path / "qdrant", step_sizes=[10])
    indexer.build()
    record = read_manifest(tmp_path / "q")["qdrant"]
    assert record["fields"] == ["row", "year", "period_10"] and record["loaded"] == record["points"] == 300
    client = qdrant_index.connect(qdrant_index.QdrantLocation(path=str(tmp_path / "qdrant")))
    point = client.retrieve(record["collection"], [7], with_payload=True)[0]
    year = VectorStore(store_dir).items[7]["year"]
    assert point.payload == {"row": 7, "year": year, "period_10": year - year % 10}
    indexer = qdrant_indexer(store_dir, tmp_path / "q", tmp_path / "qdrant", step_sizes=[10, 25])
    indexer.build()
    again = read_manifest(tmp_path / "q")["qdrant"]
    assert again["collection"] == record["collection"] and again["fields"][-1] == "period_25"
    point = client.retrieve(record["collection"], [7], with_payload=True)[0]
    assert point.payload["period_25"] == year - year % 25
    store = VectorStore(store_dir)
    urn = store.items[7]["urn"]
    for period in indexer.query_all(urn, n_nns=[5])["steps"]["25"]:
        rows = period_rows(store, period["start"], period["end"])
        expected, _ = brute_force(store, 7, rows, 5, "euclidean", indexer.index_dir)
        assert [neighbour["urn"] for neighbour in period["neighbours"]] == expected


def test_appended_rows_are_loaded_alone_and_an_older_reader_never_answers_them(tmp_path):
    store_dir = make_store(tmp_path / "vectors", n=400, dim=16)
    indexer = qdrant_indexer(store_dir, tmp_path / "q", tmp_path / "qdrant", descriptor="raw")
    indexer.build()
    before = read_manifest(tmp_path / "q")["qdrant"]
    older = Collection(store_dir, tmp_path / "q", settings=EVERY_PERIOD)  # opened before the append
    vectors, items = synthetic(100, 16, seed=9, start=400)
    vectors[:] = older.store.vectors[3] + 1e-4  # all of them nearer to row 3 than anything stored
    with VectorStoreWriter(store_dir, "test-model", 16) as writer:
        writer.append(vectors, items)
    client = older.core.qdrant.client
    counting = CountingCalls(client, "upsert")
    client.upsert = counting
    try:
        AnnoyIndexer(store_dir, tmp_path / "q", verbose=False, search_settings=EVERY_PERIOD).build()
    finally:
        del client.upsert
    after = read_manifest(tmp_path / "q")["qdrant"]
    assert after["collection"] == before["collection"] and after["loaded"] == 500
    assert sum(len(call[1]["points"].ids) for call in counting.calls) == 100  # only the new rows
    urn = older.store.items[3]["urn"]
    old_answer = older.neighbours(urn, nns=10, steps=[None, 10, 1])
    rows = [older.store.row_of(n["urn"]) for periods in old_answer["steps"].values() for period in periods
            for n in period["neighbours"]]
    assert rows and max(rows) < 400
    new = Collection(store_dir, tmp_path / "q", settings=EVERY_PERIOD)
    whole = new.neighbours(urn, nns=10, steps=[None])["steps"]["all"][0]["neighbours"]
    assert all(new.store.row_of(n["urn"]) >= 400 for n in whole)


def test_an_interrupted_load_resumes_where_it_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(qdrant_index, "LOAD_BATCH", 50)
    store_dir = make_store(tmp_path / "vectors", n=400, dim=16)
    location = qdrant_index.QdrantLocation(path=str(tmp_path / "qdrant"))
    client = qdrant_index.connect(location)
    counting = CountingCalls(client, "upsert")
    counting.fail_after = 3
    client.upsert = counting
    monkeypatch.setattr(qdrant_index.time, "perf_counter", iter(range(0, 10**6, 2)).__next__)  # save often
    try:
        with pytest.raises(KeyboardInterrupt):
            qdrant_indexer(store_dir, tmp_path / "q", tmp_path / "qdrant").build()
        pending = read_manifest(tmp_path / "q")["pending"]["qdrant"]
        assert pending["loaded"] == 150
        counting.calls.clear()
        counting.fail_after = None
        indexer = qdrant_indexer(store_dir, tmp_path / "q", tmp_path / "qdrant")
        indexer.build()
    finally:
        del client.upsert
    assert [call[1]["points"].ids[0] for call in counting.calls] == list(range(150, 400, 50))
    manifest = read_manifest(tmp_path / "q")
    assert "pending" not in manifest and manifest["qdrant"]["collection"] == pending["collection"]
    assert client.count(pending["collection"], exact=True).count == 400
    store = VectorStore(store_dir)
    for row in (0, 200, 399):
        expected, _ = brute_force(store, row, np.arange(400), 5, "euclidean", indexer.index_dir)
        assert [n["urn"] for n in indexer.query(store.items[row]["urn"], n=5)] == expected


def test_a_deleted_collection_is_loaded_again_and_force_to_annoy_drops_it(tmp_path):
    store_dir = make_store(tmp_path / "vectors", n=300, dim=16)
    indexer = qdrant_indexer(store_dir, tmp_path / "q", tmp_path / "qdrant")
    indexer.build()
    name = read_manifest(tmp_path / "q")["qdrant"]["collection"]
    client = qdrant_index.connect(qdrant_index.QdrantLocation(path=str(tmp_path / "qdrant")))
    client.delete_collection(name)
    urn = VectorStore(store_dir).items[0]["urn"]
    again = qdrant_indexer(store_dir, tmp_path / "q", tmp_path / "qdrant")
    assert len(again.query(urn, n=5)) == 5  # opening found it missing, and the build loaded it again
    assert client.count(name, exact=True).count == 300
    with pytest.raises(ValueError, match="backend='qdrant'"):
        AnnoyIndexer(store_dir, tmp_path / "q", backend="annoy", verbose=False).build()
    AnnoyIndexer(store_dir, tmp_path / "q", backend="annoy", verbose=False).build(force=True)
    assert not client.collection_exists(name)
    manifest = read_manifest(tmp_path / "q")
    assert manifest["backend"] == "annoy" and "qdrant" not in manifest


def test_a_refitted_transform_loads_a_new_collection_and_drops_the_old(tmp_path):
    store_dir = make_store(tmp_path / "vectors", n=100, dim=16)
    indexer = qdrant_indexer(store_dir, tmp_path / "q", tmp_path / "qdrant")
    indexer.build()
    first = read_manifest(tmp_path / "q")["qdrant"]["collection"]
    vectors, items = synthetic(300, 16, seed=2, start=100)  # fitted on 100 of 400: refitted
    with VectorStoreWriter(store_dir, "test-model", 16) as writer:
        writer.append(vectors, items)
    indexer.build()
    second = read_manifest(tmp_path / "q")["qdrant"]
    client = qdrant_index.connect(qdrant_index.QdrantLocation(path=str(tmp_path / "qdrant")))
    assert second["collection"] != first and second["loaded"] == 400
    assert not client.collection_exists(first) and client.collection_exists(second["collection"])


def test_api_answers_like_the_annoy_backend_and_filters_are_exact(tmp_path):
    store_dir = make_store(tmp_path / "vectors", n=400, dim=16)
    qdrant_indexer(store_dir, tmp_path / "q", tmp_path / "qdrant").build()
    AnnoyIndexer(store_dir, tmp_path / "a", verbose=False).build()
    store = VectorStore(store_dir)
    allowed = np.arange(3, 400, 25)  # a filter on 16 titles (any of a column's values)
    answers = {}
    for name in ("q", "a"):
        client = webtest.TestApp(make_app(Collection(store_dir, tmp_path / name, settings=EVERY_PERIOD)))
        answers[name] = client.get("/api/neighbours", {"urn": "urn:test:11", "nns": 5,
                                                        "step": "all,10,1"}).json
        titles = [("filter", f"title:image {row}") for row in allowed]
        filtered = client.get("/api/neighbours", [("urn", "urn:test:11"), ("nns", "5"), ("step", "all"),
                                                  *titles]).json
        expected, _ = brute_force(store, 11, allowed, 5, "euclidean", tmp_path / name)
        assert [n["urn"] for n in filtered["steps"]["all"][0]["neighbours"]] == expected
    for key, periods in answers["q"]["steps"].items():
        for found, other in zip(periods, answers["a"]["steps"][key], strict=True):
            assert found["period"] == other["period"]
            same = {n["urn"] for n in found["neighbours"]} & {n["urn"] for n in other["neighbours"]}
            assert len(same) >= len(found["neighbours"]) - 1


def test_command_line_build_query_and_errors(tmp_path):
    store_dir = make_store(tmp_path / "vectors", n=200, dim=16)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(*arguments: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "annoy_indexer.py"), *arguments],
                              capture_output=True, text=True, env={**env, **(extra_env or {})}, timeout=120)

    built = run("build", str(store_dir), str(tmp_path / "q"), "--qdrant-path", str(tmp_path / "qdrant"),
                "--quiet", "--qdrant-shards", "2", "--qdrant-replicas", "1")
    assert built.returncode == 0, built.stderr
    manifest = json.loads((tmp_path / "q" / "index.json").read_text())
    assert manifest["backend"] == "qdrant"
    assert (manifest["qdrant"]["shards"], manifest["qdrant"]["replicas"]) == (2, 1)
    verified = run("verify", str(store_dir), str(tmp_path / "q"))
    assert verified.returncode == 0 and "ok: the Qdrant collection" in verified.stdout, verified.stdout
    query = run("query", str(store_dir), str(tmp_path / "q"), "urn:test:3", "--nns", "3", "--step", "10")
    assert query.returncode == 0, query.stderr
    assert all(len(period["neighbours"]) <= 3 for period in json.loads(query.stdout)["steps"]["10"])
    (tmp_path / "qdrant" / "collection").rename(tmp_path / "qdrant" / "moved")  # the collection deleted
    damaged = run("verify", str(store_dir), str(tmp_path / "q"))
    assert damaged.returncode == 1 and "damaged: the Qdrant collection" in damaged.stdout, damaged.stdout
    missing = run("build", str(store_dir), str(tmp_path / "other"), "--backend", "qdrant")
    assert missing.returncode == 2 and "--qdrant-url" in missing.stderr
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    both = run("build", str(store_dir), str(tmp_path / "other"), "--qdrant-url", "http://127.0.0.1:9",
               "--qdrant-path", str(tmp_path / "x"))
    assert both.returncode == 2 and "not both" in both.stderr
    shards = run("build", str(store_dir), str(tmp_path / "other"), "--qdrant-path", str(tmp_path / "x"),
                 "--qdrant-shards", "0")
    assert shards.returncode == 2 and "--qdrant-shards must be a positive whole number" in shards.stderr
    unreachable = run("build", str(store_dir), str(tmp_path / "other"), "--qdrant-url", "http://127.0.0.1:9")
    assert unreachable.returncode == 2 and "cannot reach the Qdrant server at http://127.0.0.1:9" in \
        unreachable.stderr and "Traceback" not in unreachable.stderr
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "qdrant_client.py").write_text("raise ImportError('not installed')\n")
    absent = run("build", str(store_dir), str(tmp_path / "third"), "--qdrant-path", str(tmp_path / "q3"),
                 extra_env={"PYTHONPATH": f"{shim}{os.pathsep}{ROOT}"})
    assert absent.returncode == 2 and 'pip install ".[qdrant]"' in absent.stderr
    assert "Traceback" not in absent.stderr


def test_a_qdrant_that_stops_answering_is_a_503_with_a_message_and_the_server_goes_on(tmp_path):
    store_dir = make_store(tmp_path / "vectors", n=300, dim=16)
    qdrant_indexer(store_dir, tmp_path / "q", tmp_path / "qdrant").build()
    collection = Collection(store_dir, tmp_path / "q", settings=EVERY_PERIOD)
    client = webtest.TestApp(make_app(collection))
    assert client.get("/api/neighbours", {"urn": "urn:test:1", "step": "10"}).status_int == 200
    real = collection.core.qdrant.client
    # a real client of a server that is down (nothing listens on port 9 of this machine)
    collection.core.qdrant.client = qdrant_client.QdrantClient(url="http://127.0.0.1:9", timeout=5)
    try:
        down = client.get("/api/neighbours", {"urn": "urn:test:1", "step": "10"}, status=503)
        assert "Qdrant" in down.json["error"] and "did not answer" in down.json["error"]
        assert down.headers["Retry-After"] == "30" and "Traceback" not in down.text
    finally:
        collection.core.qdrant.client = real
    assert client.get("/api/neighbours", {"urn": "urn:test:1", "step": "10"}).status_int == 200
