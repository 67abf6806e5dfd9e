"""The original Siamese's API beside ours: GET /query and /random (siamese/original_api.py) and the
original's keywords of AnnoyIndexer, over a collection imported from the original layout (real vectors
of real images, original_support.py); one test per defect of the original that is not copied."""

from __future__ import annotations

from urllib.parse import quote, urlencode

import numpy as np
import pytest
from webtest import TestApp

from annoy_indexer import AnnoyIndexer
from app import Collection, make_app
from import_siamese import import_siamese
from original_support import OriginalLayout, write_original_layout
from siamese.vector_store import VectorStore

STEPS = [50, 10, 1]


@pytest.fixture(scope="module")
def layout(tmp_path_factory, app_collection) -> OriginalLayout:
    return write_original_layout(tmp_path_factory.mktemp("original"), VectorStore(app_collection.vector_dir))


@pytest.fixture(scope="module")
def collection(tmp_path_factory, layout) -> Collection:
    directory = tmp_path_factory.mktemp("imported")
    import_siamese(layout.old_dir, directory / "vectors", layout.metadata_csv, progress=False)
    AnnoyIndexer(directory / "vectors", directory / "indices", step_sizes=STEPS, verbose=False).build()
    return Collection(directory / "vectors", directory / "indices", None)


@pytest.fixture(scope="module")
def indexer(collection) -> AnnoyIndexer:
    """The notebook's view of the same directories."""
    return AnnoyIndexer(collection.vector_dir, collection.index_dir, step_sizes=collection.steps,
                        verbose=False)


@pytest.fixture(scope="module")
def client(collection) -> TestApp:
    return TestApp(make_app(collection))


def get(client: TestApp, path: str, status: int = 200, query: str | None = None, **parameters) -> dict:
    query = query if query is not None else urlencode(parameters)
    response = client.get(path + ("?" + query if query else ""), status=status)
    assert response.content_type == "application/json"
    return response.json


def assert_error(body: dict, status: int, *phrases: str) -> None:
    assert set(body) == {"error", "status"} and body["status"] == status
    for phrase in phrases:
        assert phrase in body["error"], (phrase, body["error"])


def ours_as_original(client: TestApp, urn: str, nns: int, step: int | str, vectors: bool = False) -> dict:
    """/api/neighbours' answer for one step, in the original's {"<start>": [neighbor, ...]} shape."""
    body = get(client, "/api/neighbours", urn=urn, nns=nns, step=step, vectors=str(vectors).lower())
    [periods] = body["steps"].values()
    fields = ("urn", "year", "path", "distance", "vector") if vectors else ("urn", "year", "path", "distance")
    return {str(period["start"]): [{name: found[name] for name in fields} for found in period["neighbours"]]
            for period in periods}


@pytest.fixture(scope="module")
def dashed_urn(layout) -> str:
    """An emoji urn with ':' and '-' of its own: the kind the original's file names corrupted."""
    return next(urn for urn in layout.restorable if urn.startswith("emoji:") and "-" in urn)


# ----------------------------------------------------------------------------- GET /query


def test_default_query_is_10_per_50_years_and_1_per_year_as_our_routes_answer(client, layout, dashed_urn):
    body = get(client, "/query", urn=dashed_urn)
    year = layout.years[dashed_urn]
    assert body["source"] == {"urn": dashed_urn, "year": year, "image": f"{dashed_urn.replace(':', '-')}.jpg"}
    assert list(body["neighbors"]) == ["50", "1"]
    assert body["neighbors"]["50"] == ours_as_original(client, dashed_urn, 10, 50)
    assert body["neighbors"]["1"] == ours_as_original(client, dashed_urn, 1, 1)
    assert list(body["neighbors"]["50"]) == ["1900", "1950"]
    assert all(len(found) == 10 for found in body["neighbors"]["50"].values())
    assert list(body["neighbors"]["1"]) == [str(year) for year in range(1900, 1991)]  # empty years too
    neighbor = body["neighbors"]["50"]["1900"][0]
    assert list(neighbor) == ["urn", "year", "path", "distance"]
    assert neighbor["path"] == f"{neighbor['year']}/{neighbor['urn'].replace(':', '-')}.jpg"


def test_query_answers_what_query_all_answers_with_the_originals_keywords(client, layout, indexer):
    urn = layout.restorable[0]
    body = get(client, "/query", urn=urn, nns=4, step=10)
    result = indexer.query_all(urn, n_nns=[4], step_sizes=[10], exclude_self=True)
    assert body["neighbors"] == {"10": {
        str(period["start"]): [{"urn": found["urn"], "year": found["year"], "path": found["path"],
                                "distance": found["distance"]} for found in period["neighbours"]]
        for period in result["steps"]["10"]}}


def test_the_pairs_twin_is_among_the_nearest(client, layout):
    """A real-image check of the imported vectors: the other maker's drawing of an emoji is close."""
    by_source = {source: urn for urn, source in layout.source_urn.items() if urn in layout.restorable}
    hits = 0
    for urn, source in layout.source_urn.items():
        twin_source = source.replace("google", "twitter") if "google" in source else source.replace(
            "twitter", "google")
        if urn not in layout.restorable or twin_source not in by_source:
            continue
        body = get(client, "/query", urn=urn, nns=10, step="all")
        [found] = body["neighbors"]["all"].values()
        hits += by_source[twin_source] in [neighbor["urn"] for neighbor in found]
    assert hits >= 30


def test_step_alone_and_nns_alone(client, layout):
    urn = layout.restorable[1]
    body = get(client, "/query", urn=urn, step=10)
    assert body["neighbors"] == {"10": ours_as_original(client, urn, 10, 10)}
    body = get(client, "/query", urn=urn, nns=3)
    assert body["neighbors"] == {"50": ours_as_original(client, urn, 3, 50),
                                 "1": ours_as_original(client, urn, 1, 1)}
    body = get(client, "/query", urn=urn, nns=5, step="all")
    assert list(body["neighbors"]["all"]) == ["1900"] and len(body["neighbors"]["all"]["1900"]) == 5


def test_delpher_resolver_links_are_accepted_as_urns(client, layout):
    urn = next(urn for urn in layout.restorable if urn.startswith("ddd:"))
    expected = get(client, "/query", urn=urn, nns=2, step=50)
    link = f"http://resolver.kb.nl/resolve?urn={urn}"
    assert get(client, "/query", urn=link, nns=2, step=50) == expected  # percent-encoded
    assert get(client, "/query", query=f"urn={link}&nns=2&step=50") == expected  # as a browser may send it
    assert get(client, "/query", query=f"urn={quote(link.replace('http', 'https'), safe='')}&nns=2&step=50") \
        == expected


# ----------------------------------------------------------------------------- the original's defects


def test_defect_missing_or_unknown_urn_is_a_4xx_json_error_not_a_500(client):
    assert_error(get(client, "/query", status=400), 400, "'urn' is required")
    assert_error(get(client, "/query", status=400, urn=""), 400, "'urn' is required")
    assert_error(get(client, "/query", status=404, urn="ddd:000000000:mpeg21:a0000"), 404,
                 "not in this collection")
    assert_error(get(client, "/query", status=404, urn="http://resolver.kb.nl/resolve?urn=nope"), 404,
                 "'nope'")
    assert_error(get(client, "/query", status=400, urn="x", nns="ten"), 400, "nns must be")
    assert_error(get(client, "/query", status=400, urn="x", nns="0", step="10"), 400, "nns must be")
    assert_error(get(client, "/query", status=400, urn="x", nn="5"), 400, "unknown parameter 'nn'")
    assert_error(get(client, "/query", status=400, urn="x", vectors="maybe"), 400, "vectors must be")
    assert_error(get(client, "/random", status=400, n="3"), 400, "unknown parameter 'n'")


def test_defect_vectors_false_leaves_the_vectors_out(client, collection, layout):
    urn = layout.restorable[2]
    for flag in (None, "false", "0", "no"):
        body = get(client, "/query", urn=urn, nns=2, step=10, **({} if flag is None else {"vectors": flag}))
        assert "vector" not in body["source"]
        assert all("vector" not in found for period in body["neighbors"]["10"].values() for found in period)
    body = get(client, "/query", urn=urn, nns=2, step=10, vectors="true")
    assert body["neighbors"]["10"] == ours_as_original(client, urn, 2, 10, vectors=True)
    assert np.array_equal(np.float32(body["source"]["vector"]), layout.vectors[urn])
    for period in body["neighbors"]["10"].values():
        for found in period:
            assert np.array_equal(np.float32(found["vector"]), layout.vectors[found["urn"]])


def test_defect_the_query_image_is_never_its_own_neighbour(client, layout):
    for urn in layout.restorable[:8]:
        for parameters in ({"nns": 3, "step": 1}, {"nns": 3, "step": 10}, {}, {"nns": 5, "step": "all"}):
            body = get(client, "/query", urn=urn, **parameters)
            assert all(found["urn"] != urn for periods in body["neighbors"].values()
                       for found_list in periods.values() for found in found_list)


def test_defect_a_step_that_was_not_built_is_a_400_naming_the_built_ones(client, layout):
    for step in ("5", "100", "-1", "ten"):
        assert_error(get(client, "/query", status=400, urn=layout.restorable[0], nns=2, step=step), 400,
                     "step must be one of", "50, 10, 1")


def test_defect_random_never_repeats_an_image(client, collection):
    urns = set(collection.store.urns)
    for _ in range(20):
        images = get(client, "/random")["images"]
        assert len(images) == 10 and len({image["urn"] for image in images}) == 10
        for image in images:
            assert list(image) == ["urn", "year", "path"] and image["urn"] in urns
            assert image["year"] == collection.store.items[collection.store.row_of(image["urn"])]["year"]


def test_defect_the_page_never_writes_the_urn_into_its_html(client):
    evil = '"><script>alert(1)</script>'
    response = client.get("/?" + urlencode({"urn": evil}))
    assert response.status_int == 200
    assert "<script>alert(1)" not in response.text and evil not in response.text


def test_defect_urns_with_dashes_come_back_as_they_are(client, layout):
    dashed = [urn for urn in layout.restorable if "-" in urn]
    assert len(dashed) >= 5
    for urn in dashed:
        assert get(client, "/query", urn=urn, nns=1, step=50)["source"]["urn"] == urn
    returned = {image["urn"] for _ in range(10) for image in get(client, "/random")["images"]}
    assert returned <= set(layout.restorable)


# ----------------------------------------------------------------------------- the original's Python API


def test_the_original_readme_calls_work(collection):
    vector_dir, index_dir = collection.vector_dir, collection.index_dir
    indexer = AnnoyIndexer(vector_dir=vector_dir, index_dir=index_dir, n_dimensions=2048,
                           metric="euclidean", verbose=False)
    assert indexer.load(step_sizes=[10]) is indexer and indexer.step_sizes == [10]
    urn = collection.store.urns[0]
    result = indexer.query_all(urn, n_nns=[5])
    assert list(result["steps"]) == ["10"] and all(len(period["neighbours"]) <= 5
                                                   for period in result["steps"]["10"])
    assert result == indexer.query_all(urn, n_nns=[5], step_sizes=[10])
    assert indexer.load().step_sizes == [10]  # load() keeps them, as load([]) does
    with pytest.raises(ValueError, match="step must be one of"):
        indexer.query_all(urn, n_nns=[5], step_sizes=[50])  # not loaded: an error, not {}
    with pytest.raises(ValueError, match="n_nns"):
        indexer.query_all(urn, n_nns=[5, 1], step_sizes=[10])


def test_query_all_step_sizes_pairs_n_nns_in_order(collection, indexer):
    urn = collection.store.urns[3]
    result = indexer.query_all(urn, n_nns=[2, 1], step_sizes=[1, 50], vectors=True)
    assert list(result["steps"]) == ["1", "50"] and "vector" in result
    assert all(len(period["neighbours"]) <= 2 for period in result["steps"]["1"])
    assert all(len(period["neighbours"]) == 1 and "vector" in period["neighbours"][0]
               for period in result["steps"]["50"])


def test_query_all_exclude_self_false_keeps_the_query_first_in_its_own_period(collection, layout, indexer):
    urn = layout.restorable[5]
    year = layout.years[urn]
    without = indexer.query_all(urn, n_nns=3, step_sizes=[10, 1])
    kept = indexer.query_all(urn, n_nns=3, step_sizes=[10, 1], exclude_self=False)
    for step in ("10", "1"):
        for before, after in zip(without["steps"][step], kept["steps"][step], strict=True):
            if before["start"] <= year <= before["end"]:
                assert after["neighbours"][0]["urn"] == urn and after["neighbours"][0]["distance"] == 0
                assert after["neighbours"][1:] == before["neighbours"][:len(after["neighbours"]) - 1]
                assert len(after["neighbours"]) == min(3, len(before["neighbours"]) + 1)
            else:
                assert after == before


def test_build_takes_the_originals_n_trees_and_step_sizes(collection, tmp_path):
    indexer = AnnoyIndexer(collection.vector_dir, tmp_path / "indices", verbose=False)
    report = indexer.build(n_trees=5, step_sizes=[50, 1])
    assert report["built"] > 0 and indexer.step_sizes == [50, 1] and indexer.n_trees == 5
    urn = collection.store.urns[0]
    # periods this small are searched exhaustively: the same answer whatever the trees
    assert indexer.query_all(urn, n_nns=[10, 1]) == indexer.query_all(
        urn, n_nns=[10, 1], step_sizes=[50, 1])
