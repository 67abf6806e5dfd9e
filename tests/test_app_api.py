"""The web app's JSON API, over real indices of real emoji images (the app_collection fixture).

Requests go through WebTest (which also checks WSGI conformance) or, where a client would encode or
refuse the input, straight through the WSGI interface (app_support.call).
"""

from __future__ import annotations

import io
import json
from urllib.parse import urlencode

import numpy as np
import pytest
from PIL import Image
from webtest import TestApp

import app as app_module
from annoy_indexer import AnnoyIndexer, read_manifest
from app import MAX_NNS, Collection, CollectionError, make_app
from app_support import ODD_YEAR, call
from siamese.index_dir import read_transform
from siamese.thumbnails import Thumbnails
from siamese.vector_store import VectorStore


@pytest.fixture(scope="module")
def collection(app_collection) -> Collection:
    NO_THUMBNAIL.add(app_collection.no_thumbnail_urn)
    THUMBNAILS[:] = [Thumbnails(app_collection.thumbnail_dir)]
    return Collection(app_collection.vector_dir, app_collection.index_dir, app_collection.thumbnail_dir)


@pytest.fixture(scope="module")
def client(collection) -> TestApp:
    return TestApp(make_app(collection))


@pytest.fixture(scope="module")
def store(app_collection) -> VectorStore:
    return VectorStore(app_collection.vector_dir)


def get(client: TestApp, path: str, status: int = 200, **parameters):
    response = client.get(path + ("?" + urlencode(parameters) if parameters else ""), status=status)
    assert response.content_type == "application/json" and response.charset.lower() == "utf-8"
    return response.json


def assert_error(body: dict, status: int, *phrases: str) -> None:
    assert set(body) == {"error", "status"} and body["status"] == status
    for phrase in phrases:
        assert phrase in body["error"], (phrase, body["error"])


NEIGHBOUR_FIELDS = {"urn", "distance", "date", "year", "path", "maker", "name", "category", "subcategory",
                    "unified", "added_in", "thumbnail"}


def whole(body: dict) -> list[dict]:
    """The neighbours of a whole-collection answer (its one period)."""
    [period] = body["steps"]["all"]
    return period["neighbours"]


NO_THUMBNAIL: set[str] = set()  # filled by the collection fixture
THUMBNAILS: list[Thumbnails] = []  # likewise


def thumbnail_url(urn: str) -> str | None:
    """The URL the answers give: the file's version (v=) lets browsers keep it for good."""
    if urn in NO_THUMBNAIL:
        return None
    return "/thumbnail?" + urlencode({"urn": urn, "v": THUMBNAILS[0].version(urn)})


# ----------------------------------------------------------------------------- /api/neighbours


def test_whole_collection_neighbours_are_the_exact_nearest_by_increasing_distance(client, app_collection,
                                                                                    collection, store):
    urn = app_collection.urns[0]
    body = get(client, "/api/neighbours", urn=urn)
    assert list(body) == ["urn", "metadata", "thumbnail", "nns", "step", "steps"]
    assert (body["urn"], body["thumbnail"], body["nns"], body["step"]) == (urn, thumbnail_url(urn), 10, None)
    item = store.items[store.row_of(urn)]
    assert body["metadata"] == {"date": item["date"], "year": item["year"], "path": item["path"],
                                **item["metadata"]}
    [period] = body["steps"]["all"]
    first, last = collection.years
    assert period["period"] == f"{first}-{last}" and (period["start"], period["end"]) == (first, last)
    neighbours = period["neighbours"]
    assert len(neighbours) == 10 and all(set(n) == NEIGHBOUR_FIELDS for n in neighbours)
    assert all(n["thumbnail"] == thumbnail_url(n["urn"]) for n in neighbours)
    assert urn not in [n["urn"] for n in neighbours]
    # in the index directory's descriptor space: its saved transform, applied here to the stored vectors
    manifest = read_manifest(app_collection.index_dir)
    transform = read_transform(app_collection.index_dir, manifest["transform"])
    descriptors = transform.apply(np.asarray(store.vectors))
    exact = np.linalg.norm(descriptors - descriptors[store.row_of(urn)], axis=1)
    exact[store.row_of(urn)] = np.inf
    expected = [store.items[row]["urn"] for row in np.argsort(exact, kind="stable")[:10]]
    assert [n["urn"] for n in neighbours] == expected  # 49 items: every search is exhaustive, so exact
    np.testing.assert_allclose([n["distance"] for n in neighbours], np.sort(exact)[:10], rtol=1e-4)


def test_step_all_is_the_whole_collection(client, app_collection):
    urn = app_collection.urns[0]
    assert get(client, "/api/neighbours", urn=urn, step="all") == get(client, "/api/neighbours", urn=urn)


def test_the_other_makers_drawing_of_an_emoji_is_found_near_the_top(client, app_collection):
    """What researchers use Siamese for, through the API; holds only with the real model's vectors."""
    found = 0
    for google, twitter in app_collection.pairs:
        found += twitter in [n["urn"] for n in whole(get(client, "/api/neighbours", urn=google, nns=3))]
    assert found / len(app_collection.pairs) >= 0.6, f"twin in the top 3 for {found} of 24 emoji"


@pytest.mark.parametrize("nns", [1, 3, 48])
def test_nns_is_the_number_of_neighbours(client, app_collection, nns):
    body = get(client, "/api/neighbours", urn=app_collection.urns[5], nns=nns)
    assert body["nns"] == nns and len(whole(body)) == nns


def test_nns_beyond_the_collection_gives_every_other_image(client, app_collection):
    body = get(client, "/api/neighbours", urn=app_collection.urns[5], nns=MAX_NNS)
    assert len(whole(body)) == len(app_collection.urns) - 1


@pytest.mark.parametrize("step", [10, 1])
def test_step_gives_every_period_with_its_own_nearest_neighbours(client, collection, app_collection, step):
    urn = app_collection.urns[1]
    body = get(client, "/api/neighbours", urn=urn, nns=4, step=step)
    assert list(body) == ["urn", "metadata", "thumbnail", "nns", "step", "steps"]
    assert (body["urn"], body["nns"], body["step"], list(body["steps"])) == (urn, 4, step, [str(step)])
    periods = body["steps"][str(step)]
    first, last = collection.years
    assert periods[0]["start"] == first - first % step and periods[-1]["end"] >= last
    for before, after in zip(periods, periods[1:], strict=False):
        assert after["start"] == before["end"] + 1  # contiguous: empty periods are listed too
    for period in periods:
        assert set(period) == {"period", "start", "end", "neighbours"}
        assert period["end"] - period["start"] + 1 == step
        assert period["period"] == (str(period["start"]) if step == 1
                                    else f"{period['start']}-{period['end']}")
        assert len(period["neighbours"]) <= 4
        assert all(period["start"] <= n["year"] <= period["end"] for n in period["neighbours"])
        assert all(set(n) == NEIGHBOUR_FIELDS for n in period["neighbours"])
        distances = [n["distance"] for n in period["neighbours"]]
        assert distances == sorted(distances)
    assert urn not in [n["urn"] for p in periods for n in p["neighbours"]]
    # The structure of AnnoyIndexer.query_all for that step, with thumbnail URLs added.
    indexer = AnnoyIndexer(app_collection.vector_dir, app_collection.index_dir, step_sizes=[10, 1],
                           verbose=False)
    expected = json.loads(json.dumps(indexer.query_all(urn, n_nns=4)))
    for period in expected["steps"][str(step)]:
        for neighbour in period["neighbours"]:
            neighbour["thumbnail"] = thumbnail_url(neighbour["urn"])
    assert periods == expected["steps"][str(step)] and body["metadata"] == expected["metadata"]


def test_step_1_lists_empty_years_and_the_odd_urns_own_year(client, app_collection):
    periods = get(client, "/api/neighbours", urn=app_collection.urns[0], step=1)["steps"]["1"]
    by_year = {p["period"]: p["neighbours"] for p in periods}
    assert [n["urn"] for n in by_year[ODD_YEAR]] == [app_collection.odd_urn]
    assert any(not neighbours for neighbours in by_year.values())  # years no emoji of the sample has
    own = get(client, "/api/neighbours", urn=app_collection.odd_urn, step=1)["steps"]["1"]
    assert {p["period"]: p["neighbours"] for p in own}[ODD_YEAR] == []  # never its own neighbour


def test_a_urn_full_of_url_and_html_characters_is_found(client, app_collection):
    body = get(client, "/api/neighbours", urn=app_collection.odd_urn, nns=2)
    assert body["urn"] == app_collection.odd_urn and body["metadata"]["name"] == "Odd <urn> & co"
    assert client.get(body["thumbnail"]).content_type == "image/jpeg"  # its URL is correctly encoded
    # The odd item is a copy of the first image, so that image is its nearest neighbour, at distance 0.
    assert whole(body)[0]["urn"] == app_collection.urns[0]
    assert whole(body)[0]["distance"] == pytest.approx(0, abs=1e-3)


def test_a_missing_thumbnail_is_null(client, app_collection):
    body = get(client, "/api/neighbours", urn=app_collection.no_thumbnail_urn, step=1)
    assert body["thumbnail"] is None
    assert all(n["thumbnail"] for p in body["steps"]["1"] for n in p["neighbours"])
    others = get(client, "/api/neighbours", urn=app_collection.urns[0], nns=48)
    assert [n["thumbnail"] for n in whole(others) if n["urn"] == app_collection.no_thumbnail_urn] == [None]


@pytest.mark.parametrize("value", ["true", "1", "yes", "ON", "True"])
def test_vectors_adds_the_stored_vectors(client, app_collection, store, value):
    urn = app_collection.urns[2]
    body = get(client, "/api/neighbours", urn=urn, nns=2, vectors=value)
    np.testing.assert_array_equal(body["vector"], store.vectors[store.row_of(urn)])
    for neighbour in whole(body):
        np.testing.assert_array_equal(neighbour["vector"], store.vectors[store.row_of(neighbour["urn"])])
    periods = get(client, "/api/neighbours", urn=urn, nns=2, step=10, vectors=value)["steps"]["10"]
    assert all(len(n["vector"]) == 2048 for p in periods for n in p["neighbours"])


@pytest.mark.parametrize("value", ["false", "0", "no", "Off"])
def test_vectors_false_leaves_them_out(client, app_collection, value):
    body = get(client, "/api/neighbours", urn=app_collection.urns[2], nns=2, vectors=value)
    assert "vector" not in body and all("vector" not in n for n in whole(body))


@pytest.mark.parametrize(("query", "phrases"), [
    ({}, ["'urn' is required"]),
    ({"urn": ""}, ["'urn' is required"]),
    ({"nns": "3"}, ["'urn' is required"]),
    ({"urn": "U", "nns": "0"}, ["nns must be a whole number from 1 to 100", "'0'"]),
    ({"urn": "U", "nns": "101"}, ["from 1 to 100"]),
    ({"urn": "U", "nns": "-1"}, ["from 1 to 100"]),
    ({"urn": "U", "nns": "2.5"}, ["from 1 to 100"]),
    ({"urn": "U", "nns": " 5"}, ["from 1 to 100"]),
    ({"urn": "U", "nns": "five"}, ["from 1 to 100", "'five'"]),
    ({"urn": "U", "nns": ""}, ["from 1 to 100"]),
    ({"urn": "U", "nns": "9" * 5000}, ["from 1 to 100", "..."]),
    ({"urn": "U", "step": "5"}, ["step must be one of", "(10, 1 years)", "'all' (or left out) for"]),
    ({"urn": "U", "step": "ALL"}, ["step must be one of"]),
    ({"urn": "U", "step": "0"}, ["step must be one of"]),
    ({"urn": "U", "step": "decade"}, ["step must be one of"]),
    ({"urn": "U", "step": ""}, ["step must be one of"]),
    ({"urn": "U", "vectors": "maybe"}, ["vectors must be true or false"]),
    ({"urn": "U", "vectors": ""}, ["vectors must be true or false"]),
    ({"urn": "U", "nn": "5"}, ["unknown parameter 'nn'", "takes urn, nns, step, vectors"]),
])
def test_bad_parameters_are_400_saying_what_is_allowed(client, app_collection, query, phrases):
    query = {key: (app_collection.urns[0] if value == "U" else value) for key, value in query.items()}
    assert_error(get(client, "/api/neighbours", status=400, **query), 400, *phrases)


def test_a_parameter_given_twice_is_400(client, app_collection):
    response = client.get("/api/neighbours?" + urlencode([("urn", app_collection.urns[0]), ("nns", 3),
                                                           ("nns", 4)]), status=400)
    assert_error(response.json, 400, "'nns' given more than once")


def test_a_query_string_that_is_not_utf8_is_400(collection):
    answer = call(make_app(collection), "/api/neighbours", "urn=%FF%FE")
    assert answer.status == 400 and answer.content_type.startswith("application/json")
    assert_error(answer.json(), 400, "UTF-8")


def test_too_many_parameters_is_400(client):
    body = get(client, "/api/neighbours", status=400, **{f"p{i}": "1" for i in range(30)})
    assert_error(body, 400, "too many parameters")


def test_an_unknown_urn_is_404_naming_it(client):
    body = get(client, "/api/neighbours", status=404, urn="emoji:nobody:0000")
    assert_error(body, 404, "'emoji:nobody:0000' is not in this collection", "/api/random")


def test_urns_are_matched_exactly(client, app_collection):
    get(client, "/api/neighbours", status=404, urn=" " + app_collection.urns[0])
    get(client, "/api/neighbours", status=404, urn=app_collection.urns[0].upper())


def test_head_is_answered_like_get(client, app_collection):
    response = client.head("/api/neighbours?" + urlencode({"urn": app_collection.urns[0]}))
    assert response.status_int == 200 and response.body == b""


# ----------------------------------------------------------------------------- other routes


def test_collection_describes_what_can_be_asked(client, collection, app_collection):
    body = get(client, "/api/collection")
    assert body == {"count": 49, "model": "inception-v3-2015", "input_mode": "colour", "n_dimensions": 2048,
                    "descriptor": {"kind": "whitened", "dimensions": 48},  # 49 rows span 48 directions
                    "metric": "euclidean", "steps": [10, 1],
                    "years": {"first": collection.years[0], "last": collection.years[1]},
                    "max_nns": MAX_NNS,
                    "reprints": {"images": "thumbnails", "default": 20, "max": 100}}
    assert_error(get(client, "/api/collection", status=400, urn="x"), 400, "/api/collection takes no param")


def test_item_gives_the_metadata_and_thumbnail(client, app_collection, store):
    urn = app_collection.odd_urn
    body = get(client, "/api/item", urn=urn)
    assert body == {"urn": urn, "metadata": get(client, "/api/neighbours", urn=urn)["metadata"],
                    "thumbnail": thumbnail_url(urn)}
    with_vector = get(client, "/api/item", urn=urn, vectors="true")
    np.testing.assert_array_equal(with_vector["vector"], store.vectors[store.row_of(urn)])
    assert get(client, "/api/item", urn=app_collection.no_thumbnail_urn)["thumbnail"] is None
    assert_error(get(client, "/api/item", status=404, urn="nobody"), 404, "not in this collection")
    assert_error(get(client, "/api/item", status=400), 400, "'urn' is required")
    assert_error(get(client, "/api/item", status=400, urn=urn, nns="3"), 400, "/api/item takes urn, vectors")


def test_random_gives_distinct_images_of_the_collection(client, app_collection):
    body = get(client, "/api/random")
    assert (body["n"], body["period"], len(body["images"])) == (1, None, 1)
    body = get(client, "/api/random", n=12)
    urns = [image["urn"] for image in body["images"]]
    assert len(set(urns)) == 12 and set(urns) <= set(app_collection.urns)
    assert all(set(image) == NEIGHBOUR_FIELDS - {"distance"} for image in body["images"])
    assert len(get(client, "/api/random", n=100)["images"]) == 49  # all of them, each once
    assert_error(get(client, "/api/random", status=400, n=0), 400, "n must be a whole number from 1 to 100")
    assert_error(get(client, "/api/random", status=400, urn="x"), 400, "/api/random takes n, period")


def test_random_within_a_period(client, app_collection, store):
    years = {item["urn"]: item["year"] for item in store.items}
    body = get(client, "/api/random", n=100, period="2010-2015")
    assert body["period"] == "2010-2015" and body["images"]
    assert sorted(image["urn"] for image in body["images"]) == sorted(
        urn for urn, year in years.items() if 2010 <= year <= 2015)  # all of them, only them
    only = get(client, "/api/random", n=5, period=ODD_YEAR)["images"]
    assert [image["urn"] for image in only] == [app_collection.odd_urn]
    assert get(client, "/api/random", period="1900-1909")["images"] == []  # an answer, not an error


@pytest.mark.parametrize("period", ["", "2015-2010", "2010-", "-2010", "2010–2019", "20100", "1950s", "all"])
def test_a_bad_period_is_400(client, period):
    assert_error(get(client, "/api/random", status=400, period=period), 400,
                 "period must be a year (e.g. 1950) or a range of years (e.g. 1950-1959")


def test_thumbnail_is_the_jpeg_that_make_thumbnails_wrote(client, app_collection):
    for urn in (app_collection.urns[0], app_collection.odd_urn):
        response = client.get("/thumbnail?" + urlencode({"urn": urn}))
        assert response.content_type == "image/jpeg" and "max-age" in response.headers["Cache-Control"]
        assert Image.open(io.BytesIO(response.body)).format == "JPEG"


def test_thumbnail_errors_are_json(client, app_collection):
    body = get(client, "/thumbnail", status=404, urn=app_collection.no_thumbnail_urn)
    assert_error(body, 404, "no thumbnail for urn", "make_thumbnails.py")
    assert_error(get(client, "/thumbnail", status=404, urn="nobody"), 404, "not in this collection")
    assert_error(get(client, "/thumbnail", status=400), 400, "'urn' is required")
    assert_error(get(client, "/thumbnail", status=400, urn="x", size="9"), 400, "/thumbnail takes urn")


def test_page_embeds_the_collection_and_links_its_own_scripts(client):
    response = client.get("/?urn=anything&utm_source=mail")  # the page checks urn itself, via the API
    assert response.content_type == "text/html"
    info = json.loads(response.html.find("script", id="collection").string)
    assert info["steps"] == [10, 1] and info["count"] == 49
    for link in response.html.find_all(["script", "link"]):
        source = link.get("src") or link.get("href")
        if source:
            assert source.startswith("static/"), "no CDN, nothing fetched from the web"
            client.get("/" + source, status=200)


def test_static_files_and_their_errors(client):
    assert client.get("/static/app.js").content_type in ("application/javascript", "text/javascript")
    assert_error(get(client, "/static/nothing.js", status=404), 404, "no static file")
    answer = call(client.app, "/static/../app.py")
    assert answer.status in (403, 404) and b"import" not in answer.body


@pytest.mark.parametrize(("method", "path"), [("POST", "/api/neighbours"), ("DELETE", "/"),
                                              ("PUT", "/thumbnail"), ("OPTIONS", "/api/random")])
def test_other_methods_are_405_naming_get(collection, method, path):
    answer = call(make_app(collection), path, method=method)
    assert answer.status == 405 and answer.content_type.startswith("application/json")
    assert_error(answer.json(), 405, f"method '{method}' is not allowed", "use GET")


@pytest.mark.parametrize("path", ["/nothing", "/api", "/api/neighbours/", "/thumbnail/x.jpg"])
def test_unknown_paths_are_404_listing_the_routes(client, path):
    assert_error(get(client, path, status=404), 404, "no such page", "/api/neighbours", "/api/item",
                 "/thumbnail")


def test_a_path_that_is_not_utf8_is_a_json_404(collection):
    answer = call(make_app(collection), "/nothing\xff")  # Bottle drops the bytes that are not UTF-8
    assert answer.status == 404 and answer.json()["status"] == 404


def test_an_unexpected_failure_is_a_json_500_without_a_traceback(collection, app_collection, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(collection, "neighbours", broken)
    answer = call(make_app(collection), "/api/neighbours", urlencode({"urn": app_collection.urns[0]}))
    assert answer.status == 500 and answer.content_type.startswith("application/json")
    assert answer.json() == {"error": "internal error (it is in the server's log)", "status": 500}
    debug = call(make_app(collection, debug=True), "/api/neighbours",
                 urlencode({"urn": app_collection.urns[0]}))
    assert "secret detail" in debug.json()["traceback"]


# ----------------------------------------------------------------------------- starting up


def test_a_collection_without_indices_says_how_to_build_them(app_collection, tmp_path):
    with pytest.raises(CollectionError, match="annoy_indexer.py build"):
        Collection(app_collection.vector_dir, tmp_path / "no-indices", app_collection.thumbnail_dir)


def test_command_line_errors_are_one_line_and_status_2(app_collection, tmp_path, capsys):
    status = app_module.main(["--vector-dir", str(tmp_path / "nothing"),
                              "--index-dir", str(app_collection.index_dir)])
    assert status == 2 and "is not a vector store" in capsys.readouterr().err
    status = app_module.main(["--vector-dir", str(app_collection.vector_dir), "--index-dir",
                              str(tmp_path / "none"), "--thumbnails", str(tmp_path)])
    assert status == 2 and "annoy_indexer.py build" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_status:
        app_module.main(["--vector-dir", str(app_collection.vector_dir)])
    assert exit_status.value.code == 2 and "--index-dir" in capsys.readouterr().err


def test_thumbnail_urls_follow_the_mount_point(client, app_collection):
    """Behind a proxy that mounts the app at /siamese/ (SCRIPT_NAME), the URLs it hands out still work."""
    urn = app_collection.urns[0]
    body = client.get("/api/item?" + urlencode({"urn": urn}), extra_environ={"SCRIPT_NAME": "/siamese"}).json
    assert body["thumbnail"] == "/siamese" + thumbnail_url(urn)


def test_format_csv_is_the_answer_one_row_per_neighbour_and_format_json_a_file(client, app_collection):
    import csv

    urn = app_collection.urns[4]
    answer = get(client, "/api/neighbours", urn=urn, nns=3, step="all,10,1")
    response = client.get("/api/neighbours", {"urn": urn, "nns": 3, "step": "all,10,1", "format": "csv"})
    assert response.content_type == "text/csv" and response.charset == "utf-8"
    assert response.headers["Content-Disposition"].startswith('attachment; filename="siamese-')
    assert response.headers["Content-Disposition"].endswith('-all-step10-step1.csv"')
    rows = list(csv.DictReader(io.StringIO(response.text)))
    expected = [(key, period["period"], rank, neighbour) for key, periods in answer["steps"].items()
                for period in periods for rank, neighbour in enumerate(period["neighbours"], 1)]
    assert len(rows) == len(expected) > 0
    for row, (key, period, rank, neighbour) in zip(rows, expected, strict=True):
        assert (row["query"], row["step"], row["period"], int(row["rank"]), row["urn"]) == \
            (urn, key, period, rank, neighbour["urn"])
        assert float(row["distance"]) == pytest.approx(neighbour["distance"])
        assert [row[name] for name in ("date", "path", "name")] == \
            [neighbour[name] for name in ("date", "path", "name")]
        assert row["siamese_url"].endswith("/?" + urlencode({"urn": neighbour["urn"]}))
    assert "thumbnail" not in rows[0] and "vector" not in rows[0]
    download = client.get("/api/neighbours", {"urn": urn, "nns": 3, "step": "all,10,1", "format": "json"})
    assert download.json == answer and download.headers["Content-Disposition"].endswith('.json"')
    error = client.get("/api/neighbours", {"urn": urn, "format": "xlsx"}, status=400).json
    assert error["error"] == "format must be json or csv (the answer as a file to download), got 'xlsx'"


def test_a_csv_cell_a_spreadsheet_would_run_is_kept_as_text():
    from siamese.export import answer_csv

    answer = {"urn": "q", "step": None, "steps": {"all": [{"period": "1950-1959", "start": 1950, "end": 1959,
              "neighbours": [{"urn": "=HYPERLINK(\"x\")", "distance": 1.0, "date": "1950", "year": 1950,
                              "path": "a.jpg", "title": "+31 20 123", "note": "plain", "thumbnail": "t"}]}]}}
    text = answer_csv(answer, "http://host/")
    assert "'=HYPERLINK" in text and "'+31 20 123" in text and ",plain," in text and "thumbnail" not in text


def test_every_bad_parameter_is_named_in_one_answer(client, app_collection):
    urn = app_collection.urns[0]
    query = urlencode({"urn": urn, "nns": "abc", "step": "7", "format": "xml", "bogus": "1"})
    error = client.get(f"/api/neighbours?{query}", status=400).json["error"]
    assert error.startswith("4 problems: ")
    for part in ("unknown parameter 'bogus'", "nns must be a whole number", "step must be one of",
                 "format must be json or csv"):
        assert part in error
    single = client.get("/api/neighbours", {"urn": urn, "nns": "0"}, status=400).json["error"]
    assert single.startswith("nns must be") and "problems" not in single
    both = client.get("/api/random", {"n": "0", "period": "x"}, status=400).json["error"]
    assert both.startswith("2 problems: n must be") and "period must be" in both


def test_filters_restrict_every_period_to_the_metadata_values_asked_for(client, app_collection, store):
    urn = app_collection.urns[0]
    makers = {item["metadata"]["maker"] for item in (store.items[row] for row in range(store.count))}
    assert makers == {"google", "twitter"}
    body = client.get(f"/api/neighbours?{urlencode({'urn': urn, 'nns': 4, 'step': 'all,1'})}"
                      "&filter=maker:twitter").json
    assert body["filters"] == {"maker": ["twitter"]}
    twitter_rows = [row for row in range(store.count) if store.items[row]["metadata"]["maker"] == "twitter"]
    for key, periods in body["steps"].items():
        for period in periods:
            assert all(neighbour["maker"] == "twitter" for neighbour in period["neighbours"]), key
            in_period = [row for row in twitter_rows if store.items[row]["urn"] != urn
                         and period["start"] <= store.items[row]["year"] <= period["end"]]
            assert len(period["neighbours"]) == min(4, len(in_period))  # within the filter, as many as it has
    top = body["steps"]["all"][0]["neighbours"]
    unfiltered = get(client, "/api/neighbours", urn=urn, nns=48)["steps"]["all"][0]["neighbours"]
    assert [n["urn"] for n in top] == [n["urn"] for n in unfiltered if n["maker"] == "twitter"][:4]
    both = client.get(f"/api/neighbours?{urlencode({'urn': urn, 'nns': 48})}&filter=maker:twitter"
                      "&filter=maker:google").json  # one column's values: any of them
    assert len(both["steps"]["all"][0]["neighbours"]) == len(unfiltered)
    category = top[0]["category"]
    query = urlencode([("urn", urn), ("nns", 48), ("filter", "maker:twitter"),
                       ("filter", f"category:{category}")])
    narrowed = client.get(f"/api/neighbours?{query}").json
    assert all(n["maker"] == "twitter" and n["category"] == category
               for n in narrowed["steps"]["all"][0]["neighbours"])  # columns: all of them
    unknown = client.get(f"/api/neighbours?{urlencode({'urn': urn, 'filter': 'colour:red'})}", status=400)
    assert unknown.json["error"].startswith("no column 'colour' in this collection; its columns are date")
    malformed = client.get(f"/api/neighbours?{urlencode({'urn': urn, 'filter': 'maker'})}", status=400)
    assert "filter must be column:value" in malformed.json["error"]
