"""The HTTP layer and the search core, fast: a real colour-histogram collection (no TensorFlow), real
Annoy files, the WSGI app called directly (webtest). `make test-fast` runs this tier in seconds."""

from __future__ import annotations

import functools
import gzip
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest
import webtest

from annoy_indexer import AnnoyIndexer
from app import Collection, make_app
from app_support import ODD_URN, call
from siamese import answers, backbones
from siamese.params import ParameterError, parse_steps

pytestmark = pytest.mark.fast
ROOT = Path(__file__).resolve().parent.parent


class CountingEmbedder:
    """The colour histogram, counting how often the model is asked (an upload must be embedded once)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        return backbones.colour_histogram(batch)


@pytest.fixture(scope="module")
def collection(histogram_collection) -> Collection:
    return Collection(histogram_collection.vector_dir, histogram_collection.index_dir,
                      histogram_collection.thumbnail_dir)


@pytest.fixture(scope="module")
def embedder() -> CountingEmbedder:
    return CountingEmbedder()


@pytest.fixture(scope="module")
def client(collection, embedder) -> webtest.TestApp:
    return webtest.TestApp(make_app(collection, embedder=embedder))


def neighbours(client, status: int = 200, **parameters):
    return client.get("/api/neighbours", params=parameters, status=status).json


def upload(client, path: Path, status: int = 200, **fields: str):
    files = [("image", path.name, path.read_bytes(), "image/png")]
    return client.post("/api/search", params=list(fields.items()), upload_files=files, status=status).json


# ------------------------------------------------------------------------------ several steps at once

def test_several_steps_are_one_answer_equal_to_one_request_each(client, histogram_collection):
    for urn in histogram_collection.urns[::13]:
        together = neighbours(client, urn=urn, nns="4", step="all,10,1")
        assert together["step"] == [None, 10, 1] and list(together["steps"]) == ["all", "10", "1"]
        for key in ("all", "10", "1"):
            alone = neighbours(client, urn=urn, nns="4", step=key)
            assert alone["step"] == (None if key == "all" else int(key))
            assert together["steps"][key] == alone["steps"][key]
            assert {name: value for name, value in together.items() if name not in ("step", "steps")} == \
                {name: value for name, value in alone.items() if name not in ("step", "steps")}


def test_steps_keep_the_order_asked_for(client, histogram_collection):
    answer = neighbours(client, urn=histogram_collection.urns[3], step="1,all")
    assert answer["step"] == [1, None] and list(answer["steps"]) == ["1", "all"]


@pytest.mark.parametrize("step, phrase", [("10,10", "more than once"), ("all,all", "more than once"),
                                          ("all,7", "step must be one of"), ("10,", "step must be one of"),
                                          (",", "step must be one of")])
def test_a_bad_step_list_is_400_saying_why(client, histogram_collection, step, phrase):
    answer = neighbours(client, status=400, urn=histogram_collection.urns[0], step=step)
    assert phrase in answer["error"] and answer["status"] == 400


def test_parse_steps_reads_what_the_page_sends():
    assert parse_steps(None, [10, 1]) == [None]
    assert parse_steps("all,1", [10, 1]) == [None, 1]
    with pytest.raises(ParameterError, match="more than once"):
        parse_steps("1,1", [10, 1])


# ------------------------------------------------------------------------------ upload

def test_an_upload_for_several_steps_is_embedded_once_and_answers_like_each_step(client, embedder,
                                                                                 histogram_collection):
    path = histogram_collection.image_paths[histogram_collection.urns[4]]
    before = embedder.calls
    together = upload(client, path, nns="3", step="all,10,1")
    assert embedder.calls == before + 1  # one upload, one embedding, whatever the number of steps
    assert together["urn"] is None and together["step"] == [None, 10, 1]
    assert together["model"] == "colour-histogram"
    assert together["steps"]["all"][0]["neighbours"][0]["urn"] == histogram_collection.urns[4]
    assert together["steps"]["all"][0]["neighbours"][0]["distance"] == pytest.approx(0, abs=1e-6)
    for key in ("all", "10", "1"):
        assert upload(client, path, nns="3", step=key)["steps"][key] == together["steps"][key]
    assert embedder.calls == before + 4


def test_an_upload_is_answered_like_the_stored_vector_of_the_same_image(client, collection,
                                                                       histogram_collection):
    urn = histogram_collection.urns[9]
    answer = upload(client, histogram_collection.image_paths[urn], nns="5", step="10")
    vector = np.asarray(collection.store.vectors[collection.store.row_of(urn)])
    expected = collection.periods(vector, {10: 5})["10"]
    thumbnails_removed = [{**period, "neighbours": [{k: v for k, v in found.items() if k != "thumbnail"}
                                                    for found in period["neighbours"]]}
                          for period in answer["steps"]["10"]]
    assert thumbnails_removed == expected


# ------------------------------------------------------------------------------ one metadata rule

def test_every_answer_follows_one_metadata_rule(client, histogram_collection):
    """The CSV's "distance" column (a name the answers reserve) is in no answer; the other columns
    follow the item's own fields in CSV order, for the query, its neighbours, items and random images."""
    urn = histogram_collection.urns[2]
    expected_keys = ["date", "year", "path", "title", "newspaper"]
    answer = neighbours(client, urn=urn, step="all,1", nns="3")
    assert list(answer["metadata"]) == expected_keys
    for periods in answer["steps"].values():
        for period in periods:
            for found in period["neighbours"]:
                assert list(found) == ["urn", "distance", *expected_keys, "thumbnail"]
                assert isinstance(found["distance"], float)
    assert list(client.get("/api/item", params={"urn": urn}).json["metadata"]) == expected_keys
    for image in client.get("/api/random", params={"n": "5"}).json["images"]:
        assert list(image) == ["urn", *expected_keys, "thumbnail"]


def test_describe_leaves_out_reserved_columns_and_keeps_the_others_in_order():
    item = {"urn": "u", "date": "1950", "year": 1950, "path": "p.jpg",
            "metadata": {"b": 1, "urn": "other", "a": 2, "vector": "no"}}
    assert answers.describe(item, 0.5) == {"urn": "u", "distance": 0.5, "date": "1950", "year": 1950,
                                           "path": "p.jpg", "b": 1, "a": 2}
    assert list(answers.describe(item)) == ["urn", "date", "year", "path", "b", "a"]


# ------------------------------------------------------------------------------ one store, one core

def test_a_web_process_opens_the_store_once(collection):
    assert collection.core.store is collection.store  # one copy of the items, urns and urn index


def test_the_notebook_api_and_the_web_api_give_the_same_neighbours(client, collection, histogram_collection):
    indexer = AnnoyIndexer(collection.vector_dir, collection.index_dir, step_sizes=[10, 1], verbose=False)
    for urn in (histogram_collection.urns[0], ODD_URN):
        web = neighbours(client, urn=urn, nns="5", step="all,10")
        strip = [{k: v for k, v in found.items() if k != "thumbnail"}
                 for found in web["steps"]["all"][0]["neighbours"]]
        assert indexer.query(urn, n=5) == strip
        assert [period["period"] for period in indexer.query_all(urn, n_nns=5)["steps"]["10"]] == \
            [period["period"] for period in web["steps"]["10"]]


def test_a_reprint_is_found_first_more_often_than_not(collection, histogram_collection):
    """The colour histogram finds most reprints (same colours, a pixel's shift, noise) first."""
    first = sum(collection.neighbours(urn, 1)["steps"]["all"][0]["neighbours"][0]["urn"] == reprint
                for urn, reprint in histogram_collection.reprints.items())
    assert first >= 0.7 * len(histogram_collection.reprints), first


def test_the_collection_describes_what_can_be_asked(client):
    info = client.get("/api/collection").json
    assert info["model"] == "colour-histogram" and info["steps"] == [10, 1] and info["max_nns"] == 100
    assert info["count"] == 60 and info["years"] == {"first": 1948, "last": 1975}


# ------------------------------------------------------------------------------ no TensorFlow

def test_the_web_app_answers_without_importing_tensorflow(histogram_collection):
    """The fast tier's premise: routes, search and a histogram upload never import TensorFlow."""
    script = f"""
import sys, json, webtest
sys.path.insert(0, {str(ROOT)!r})
from app import Collection, make_app
collection = Collection({str(histogram_collection.vector_dir)!r}, {str(histogram_collection.index_dir)!r})
client = webtest.TestApp(make_app(collection))
client.get("/api/neighbours", params={{"urn": {histogram_collection.urns[0]!r}, "step": "all,10,1"}})
path = {str(histogram_collection.image_paths[histogram_collection.urns[0]])!r}
client.post("/api/search", upload_files=[("image", "a.png", open(path, "rb").read(), "image/png")])
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in ("tensorflow", "keras"))))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


# ----------------------------------------------------------------------------- lean answers

def test_a_repeated_request_is_a_304_until_the_answer_may_change(client, histogram_collection, tmp_path):
    urn = histogram_collection.urns[3]
    first = client.get("/api/neighbours", {"urn": urn, "step": "all,1"})
    tag = first.headers["ETag"]
    assert tag.startswith('W/"') and first.headers["Cache-Control"] == "no-cache"
    again = client.get("/api/neighbours", {"urn": urn, "step": "all,1"}, headers={"If-None-Match": tag},
                       status=304)
    assert again.body == b"" and again.headers["ETag"] == tag
    assert client.get("/api/neighbours", {"urn": urn, "step": "all,1"},  # the strong form matches too
                      headers={"If-None-Match": tag.removeprefix("W/")}, status=304)
    other = client.get("/api/neighbours", {"urn": urn, "step": "all,10"}, headers={"If-None-Match": tag})
    assert other.status_int == 200 and other.headers["ETag"] != tag and other.json["steps"]["10"]
    for path in ("/api/item", "/api/collection"):
        params = {"urn": urn} if path == "/api/item" else {}
        kept = client.get(path, params).headers["ETag"]
        client.get(path, params, headers={"If-None-Match": f'W/"x", {kept}'}, status=304)
    assert "ETag" not in client.get("/api/random").headers  # random answers are never the same

    # rebuilt indices (here: other step sizes) or new thumbnails: the same request, another tag
    from siamese.index_build import IndexConfig, build_indices
    from siamese.vector_store import VectorStore

    build_indices(VectorStore(histogram_collection.vector_dir), tmp_path / "indices",
                  IndexConfig(step_sizes=(1,), index_dimensions=16), verbose=False)
    thumbnails = shutil.copytree(histogram_collection.thumbnail_dir, tmp_path / "thumbs")
    rebuilt = webtest.TestApp(make_app(Collection(histogram_collection.vector_dir, tmp_path / "indices",
                                                  thumbnails)))
    answer = rebuilt.get("/api/neighbours", {"urn": urn, "step": "all,1"}, headers={"If-None-Match": tag})
    assert answer.status_int == 200 and answer.headers["ETag"] != tag
    tag = answer.headers["ETag"]
    rebuilt.get("/api/neighbours", {"urn": urn, "step": "all,1"}, headers={"If-None-Match": tag}, status=304)
    (thumbnails / "new.jpg").write_bytes(b"")
    after = rebuilt.get("/api/neighbours", {"urn": urn, "step": "all,1"}, headers={"If-None-Match": tag})
    assert after.status_int == 200 and after.headers["ETag"] != tag


def test_json_is_gzipped_for_clients_that_accept_it(client, histogram_collection):
    app = client.app
    query = urlencode({"urn": histogram_collection.urns[5], "step": "all,1", "nns": "10"})
    plain = call(app, "/api/neighbours", query)
    assert "content-encoding" not in plain.headers and plain.headers["vary"] == "Accept-Encoding"
    packed = call(app, "/api/neighbours", query, headers={"Accept-Encoding": "br, gzip;q=0.8"})
    assert packed.headers["content-encoding"] == "gzip" and packed.headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(packed.body) == plain.body and len(packed.body) * 3 < len(plain.body)
    assert packed.headers["etag"] == plain.headers["etag"]  # the same answer, only encoded
    refused = call(app, "/api/neighbours", query, headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert "content-encoding" not in refused.headers and refused.body == plain.body
    small = call(app, "/api/item", urlencode({"urn": histogram_collection.urns[5]}),
                 headers={"Accept-Encoding": "gzip"})
    assert len(small.body) < 1024 and "content-encoding" not in small.headers  # not worth it
    assert client.get("/api/neighbours", {"urn": histogram_collection.urns[5], "step": "all,1"},
                      headers={"Accept-Encoding": "gzip"}).json["steps"]["1"]  # webtest un-gzips it


def test_thumbnail_urls_carry_their_version_and_are_kept_for_good(client, histogram_collection):
    urn = histogram_collection.urns[2]
    answer = client.get("/api/neighbours", {"urn": urn}).json
    url = answer["thumbnail"]
    assert "&v=" in url and all("&v=" in n["thumbnail"] for n in answer["steps"]["all"][0]["neighbours"])
    url = url if url.startswith("/") else "/" + url
    fresh = client.get(url)
    assert fresh.content_type == "image/jpeg" and fresh.headers["Cache-Control"] == \
        "public, max-age=31536000, immutable"
    stale = client.get(url.split("&v=")[0] + "&v=0")  # an older version: kept a day only
    assert stale.body == fresh.body and stale.headers["Cache-Control"] == "public, max-age=86400"


# ----------------------------------------------------------------------------- rebuilt indices

def test_a_rebuild_is_picked_up_whole_by_a_running_app(histogram_collection, tmp_path, capsys):
    """Requests go on during a rebuild (another descriptor: every distance changes); each answer is the
    old collection's or the new one's, whole, never an error; the new one is served once it is open."""
    from siamese.collection import LiveCollection
    from siamese.index_build import IndexConfig, build_indices
    from siamese.vector_store import VectorStore

    store = VectorStore(histogram_collection.vector_dir)
    indices = tmp_path / "indices"
    build_indices(store, indices, IndexConfig(step_sizes=(10,), index_dimensions=16, descriptor="raw"),
                  verbose=False)
    open_collection = functools.partial(Collection, histogram_collection.vector_dir, indices,
                                        histogram_collection.thumbnail_dir)
    live = LiveCollection(open_collection(), check_seconds=0)
    client = webtest.TestApp(make_app(live))
    paths = [f"/api/neighbours?{urlencode({'urn': urn, 'step': 'all,10'})}"
             for urn in histogram_collection.urns[:4]] + ["/api/collection"]
    before = {path: client.get(path).body for path in paths}

    seen: list[tuple[str, int, bytes]] = []
    done = threading.Event()

    def ask() -> None:
        while not done.is_set():
            for path in paths:
                answer = client.get(path, expect_errors=True)
                seen.append((path, answer.status_int, answer.body))

    asking = threading.Thread(target=ask)
    asking.start()
    try:
        whitened = IndexConfig(step_sizes=(10,), index_dimensions=16, descriptor="whitened")
        build_indices(store, indices, whitened, force=True, verbose=False)
        deadline = time.monotonic() + 60
        while live.replaced == 0 and time.monotonic() < deadline:
            live.wait(1)
            time.sleep(0.05)
        count = len(seen)
        while len(seen) < count + 2 * len(paths):
            time.sleep(0.05)
    finally:
        done.set()
        asking.join(timeout=60)
    assert live.replaced >= 1  # (a build may write its final manifest more than once)
    after = webtest.TestApp(make_app(open_collection()))
    now = {path: after.get(path).body for path in paths}
    assert all(before[path] != now[path] for path in paths[:-1])  # the rebuild changed every answer
    assert all(status == 200 for _, status, _ in seen), {status for _, status, _ in seen}
    assert all(body in (before[path], now[path]) for path, _, body in seen)  # old or new, never a mix
    assert all(body == now[path] for path, _, body in seen[-len(paths):])  # and then the new one
    assert "rebuilt: now serving" in capsys.readouterr().err

    # a manifest that does not cover the store (indices of a later state, still to be built) is not
    # served: the app keeps the collection it has, and says why
    replaced = live.replaced
    manifest = json.loads((indices / "index.json").read_text())
    manifest["store"]["count"] += 1
    (indices / "index.json").write_text(json.dumps(manifest))
    client.get(paths[0])
    live.wait(30)
    assert live.replaced == replaced and client.get(paths[0]).body == now[paths[0]]
    assert "cannot be served yet" in capsys.readouterr().err
