"""Query by an image from outside the collection: AnnoyIndexer.query_vector / query_image and
POST /api/search, over the small real collection (49 emoji, real Inception v3 2015 vectors)."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import webtest
from PIL import Image

from annoy_indexer import AnnoyIndexer
from app import Collection, make_app
from siamese import backbones, upload


@pytest.fixture(scope="module")
def collection(app_collection) -> Collection:
    return Collection(app_collection.vector_dir, app_collection.index_dir, app_collection.thumbnail_dir)


@pytest.fixture(scope="module")
def indexer(collection) -> AnnoyIndexer:
    """The notebook's view of the same directories."""
    return AnnoyIndexer(collection.vector_dir, collection.index_dir, step_sizes=collection.steps,
                        verbose=False)


@pytest.fixture(scope="module")
def client(collection, inception_2015) -> webtest.TestApp:
    return webtest.TestApp(make_app(collection, embedder=inception_2015))


@pytest.fixture(scope="module")
def twitter_paths(emoji_pairs, emoji_metadata) -> dict[str, Path]:
    """google urn -> the file of its Twitter twin."""
    return {google["urn"]: emoji_metadata.parent / twitter["path"] for google, twitter in emoji_pairs}


def png_bytes(path: Path) -> bytes:
    return path.read_bytes()


def rank_of(urns: list[str], urn: str) -> int | None:
    return urns.index(urn) + 1 if urn in urns else None


# ------------------------------------------------------------------------ Python API

def test_query_image_finds_the_other_makers_drawing(indexer, emoji_pairs, emoji_metadata, inception_2015):
    """A Twitter emoji given as a file, with the collection's (real) model: its Google twin is among the
    first results for most pairs (bench/random_baseline.py: among the 4 nearest other images for 20 of
    24 pairs with the real weights, at most 9 of 24 with random weights)."""
    found = 0
    for google, twitter in emoji_pairs:
        path = emoji_metadata.parent / twitter["path"]
        neighbours = indexer.query_image(path, n=5, embedder=inception_2015)
        urns = [neighbour["urn"] for neighbour in neighbours]
        assert urns[0] == twitter["urn"]  # the very same file is in the collection: distance ~0
        assert neighbours[0]["distance"] < 1e-2
        found += google["urn"] in urns
    assert found >= 0.75 * len(emoji_pairs), found


def test_query_vector_equals_query_of_a_stored_item(collection, indexer):
    """Querying with a stored vector gives the urn's own neighbours, plus the item itself first."""
    urn = collection.store.urns[3]
    vector = collection.store.vectors[collection.store.row_of(urn)]
    by_vector = indexer.query_vector(vector, n=6)
    by_urn = indexer.query(urn, n=5)
    assert by_vector[0]["urn"] == urn and by_vector[0]["distance"] == pytest.approx(0, abs=1e-3)
    assert [n["urn"] for n in by_vector[1:]] == [n["urn"] for n in by_urn]
    np.testing.assert_allclose([n["distance"] for n in by_vector[1:]], [n["distance"] for n in by_urn],
                               rtol=1e-5)
    periods = indexer.query_vector(vector, n=2, step=10)
    assert [p["period"] for p in periods] == [p["period"] for p in indexer.query(urn, n=2, step=10)]


def test_query_image_takes_a_pil_image_and_a_path_alike(collection, emoji_pairs, emoji_metadata,
                                                       inception_2015, indexer):
    path = emoji_metadata.parent / emoji_pairs[0][1]["path"]
    with Image.open(path) as image:
        image.load()
        from_pil = indexer.query_image(image, n=3, embedder=inception_2015)
    from_path = indexer.query_image(str(path), n=3, embedder=inception_2015)
    assert [n["urn"] for n in from_pil] == [n["urn"] for n in from_path]


@pytest.mark.parametrize("vector, message", [
    (np.zeros(10), "2048 values"),
    (np.full(2048, np.nan), "NaN"),
    ("not a vector", "numbers"),
])
def test_query_vector_refuses_bad_vectors(collection, vector, message, indexer):
    with pytest.raises(ValueError, match=message):
        indexer.query_vector(vector)


def test_query_vector_refuses_bad_n_and_step(collection, indexer):
    vector = np.zeros(2048, np.float32)
    with pytest.raises(ValueError, match="n must be"):
        indexer.query_vector(vector, n=0)
    with pytest.raises(ValueError, match="step must be"):
        indexer.query_vector(vector, step=7)


def test_query_image_uses_the_stores_model(tmp_path, pairs_csv):
    """A store of the colour histogram is queried with the histogram (loaded once, shared), never with
    another model: the histogram of a stored image finds that image at distance 0."""
    from extract_vectors import extract_vectors

    vector_dir, index_dir = tmp_path / "vectors", tmp_path / "indices"
    extract_vectors(pairs_csv, vector_dir, model="colour-histogram", progress=False)
    indexer = AnnoyIndexer(vector_dir, index_dir, step_sizes=[10], verbose=False)
    assert indexer.model == "colour-histogram"
    path = Path(next(iter(indexer.collection().store.items))["path"])
    neighbours = indexer.query_image(path, n=1)
    assert neighbours[0]["path"] == str(path) and neighbours[0]["distance"] == pytest.approx(0, abs=1e-6)
    assert backbones.shared_embedder("colour-histogram") is backbones.shared_embedder("colour-histogram")


# ------------------------------------------------------------------------ POST /api/search

def post_image(client, data: bytes, filename: str = "query.png", content_type: str = "image/png",
               status: int | str = 200, **fields: str):
    return client.post("/api/search", params=list(fields.items()),
                       upload_files=[("image", filename, data, content_type)], status=status)


def test_upload_answers_like_neighbours_and_finds_the_twin(client, collection, emoji_pairs, emoji_metadata):
    found = 0
    for google, twitter in emoji_pairs[:8]:
        answer = post_image(client, png_bytes(emoji_metadata.parent / twitter["path"]), nns="5").json
        assert answer["urn"] is None and answer["thumbnail"] is None
        assert answer["metadata"] == {"filename": "query.png", "width": 64, "height": 64,
                                      "bytes": len(png_bytes(emoji_metadata.parent / twitter["path"]))}
        assert answer["model"] == "inception-v3-2015" and answer["nns"] == 5 and answer["step"] is None
        [whole] = answer["steps"]["all"]
        urns = [neighbour["urn"] for neighbour in whole["neighbours"]]
        assert urns[0] == twitter["urn"] and len(urns) == 5
        assert all(n["thumbnail"] is None or n["thumbnail"].startswith("/thumbnail?urn=")
                   for n in whole["neighbours"])
        found += google["urn"] in urns
    assert found >= 6, found


def test_upload_by_step_has_every_period(client, emoji_pairs, emoji_metadata):
    data = png_bytes(emoji_metadata.parent / emoji_pairs[1][1]["path"])
    answer = post_image(client, data, nns="2", step="1").json
    by_urn = client.get("/api/neighbours", {"urn": emoji_pairs[1][1]["urn"], "nns": "2", "step": "1"}).json
    assert answer["step"] == 1
    assert [p["period"] for p in answer["steps"]["1"]] == [p["period"] for p in by_urn["steps"]["1"]]
    assert all(len(p["neighbours"]) <= 2 for p in answer["steps"]["1"])
    # nns and step may come in the query string as well
    again = client.post("/api/search?nns=2&step=1", upload_files=[("image", "q.png", data, "image/png")]).json
    assert again["steps"] == answer["steps"]


def test_a_jpeg_phone_photo_of_an_emoji_also_works(client, emoji_pairs, emoji_metadata):
    """A larger, lossy, greyish copy (as a phone photo of a print would be) still finds its drawing."""
    google, twitter = emoji_pairs[2]
    with Image.open(emoji_metadata.parent / twitter["path"]) as image:
        rgb = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
        photo = rgb.convert("RGB").resize((480, 480), Image.Resampling.BICUBIC)
    photo = Image.blend(photo, Image.new("RGB", photo.size, (200, 190, 170)), 0.15)
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=60)
    answer = post_image(client, buffer.getvalue(), "photo.jpg", "image/jpeg", nns="10").json
    urns = [n["urn"] for n in answer["steps"]["all"][0]["neighbours"]]
    assert twitter["urn"] in urns[:3]


def error_of(response) -> str:
    body = response.json
    assert set(body) == {"error", "status"} and body["status"] == response.status_int
    return body["error"]


def test_too_large_is_413_before_reading(client):
    big = b"\x89PNG" + bytes(upload.MAX_UPLOAD_BYTES + upload.FORM_OVERHEAD_BYTES)
    response = post_image(client, big, status=413)
    assert "at most 20 MB" in error_of(response)


def test_image_over_the_cap_within_the_form_allowance_is_413(client, monkeypatch):
    """The body may exceed the cap by the form's overhead; the image itself may not."""
    monkeypatch.setattr(upload, "MAX_UPLOAD_BYTES", 1000)
    response = post_image(client, bytes(5000), status=413)
    assert "the image is 0.0048 MB; images of at most 0.00095 MB are accepted" in error_of(response)


def bomb_png() -> bytes:
    """A tiny PNG whose header claims more pixels than the decompression-bomb limit."""
    buffer = io.BytesIO()
    Image.new("1", (16, 16)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    import struct
    import zlib
    side = 20_000  # 400 megapixels
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


@pytest.mark.parametrize("payload, content_type, expected", [
    (b"this is not an image at all", "image/png", "not an image"),
    ("truncated", "image/png", "truncated"),
    ("bomb", "image/png", "decompression bomb"),
    ("valid", "text/plain", "content type 'text/plain'"),
    (b"", "image/png", "empty"),
])
def test_unusable_uploads_are_400_with_the_reason(client, emoji_pairs, emoji_metadata, payload,
                                                 content_type, expected):
    valid = png_bytes(emoji_metadata.parent / emoji_pairs[0][1]["path"])
    data = {"truncated": valid[: len(valid) // 2], "bomb": bomb_png(), "valid": valid}.get(payload, payload)
    response = post_image(client, data, content_type=content_type, status=400)
    assert expected in error_of(response)


def test_missing_and_malformed_requests_are_400(client):
    assert "field 'image' is required" in error_of(
        client.post("/api/search", {"nns": "5"}, content_type="multipart/form-data", status=400))
    assert "multipart/form-data" in error_of(
        client.post("/api/search", b"\x89PNG....", content_type="image/png", status=400))
    assert "must be a file" in error_of(
        client.post("/api/search", {"image": "text"}, content_type="multipart/form-data", status=400))
    assert "unknown field 'nn'" in error_of(
        client.post("/api/search", [("nn", "5")], upload_files=[("image", "a.png", b"x", "image/png")],
                    status=400))
    assert "malformed" in error_of(client.post(
        "/api/search", b"--x\r\nno headers", content_type="multipart/form-data; boundary=x", status=400))
    assert "use POST" in error_of(client.get("/api/search", status=405))


@pytest.mark.parametrize("fields, expected", [
    ({"nns": "0"}, "nns must be a whole number from 1 to 100"),
    ({"nns": "five"}, "nns must be"),
    ({"nns": "101"}, "nns must be"),
    ({"step": "7"}, "step must be one of the period lengths"),
    ({"step": "decade"}, "step must be"),
])
def test_bad_nns_and_step_are_400(client, emoji_pairs, emoji_metadata, fields, expected):
    data = png_bytes(emoji_metadata.parent / emoji_pairs[0][1]["path"])
    assert expected in error_of(post_image(client, data, status=400, **fields))


def test_a_field_given_twice_is_400(client, emoji_pairs, emoji_metadata):
    data = png_bytes(emoji_metadata.parent / emoji_pairs[0][1]["path"])
    response = client.post("/api/search?nns=3", [("nns", "4")],
                           upload_files=[("image", "a.png", data, "image/png")], status=400)
    assert "more than once" in error_of(response)


class Unreadable(io.RawIOBase):
    def read(self, *args):
        raise AssertionError("the body was read")

    readline = read


def raw_post(app, headers: dict) -> tuple[str, dict]:
    """POST /api/search straight through WSGI with these environ entries and a body that must not be read."""
    from wsgiref.util import setup_testing_defaults

    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/api/search", "wsgi.input": Unreadable(), **headers}
    setup_testing_defaults(environ)
    if "CONTENT_LENGTH" not in headers:
        environ.pop("CONTENT_LENGTH", None)
    started = {}
    body = b"".join(app(environ, lambda status, response_headers, exc_info=None: started.update(s=status)))
    return started["s"], json.loads(body)


def test_a_huge_declared_length_is_413_without_reading_the_body(client):
    status, body = raw_post(client.app, {"CONTENT_TYPE": "multipart/form-data; boundary=x",
                                         "CONTENT_LENGTH": str(10 ** 9)})
    assert status.startswith("413") and "at most 20 MB" in body["error"]


def test_chunked_body_without_length_is_411(client):
    """A chunked body of unknown length could be endless: refused before it is read."""
    status, body = raw_post(client.app, {"CONTENT_TYPE": "multipart/form-data; boundary=x",
                                         "HTTP_TRANSFER_ENCODING": "chunked"})
    assert status.startswith("411") and "Content-Length" in body["error"]


def test_the_upload_lives_only_in_a_temporary_directory_that_is_removed(client, emoji_pairs, emoji_metadata,
                                                                      tmp_path, monkeypatch):
    """Every copy of the upload goes to the temporary directory (here tmp_path), and nothing is left there
    afterwards, for a good image as for a refused one."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made: list[str] = []
    original = tempfile.mkdtemp

    def recording_mkdtemp(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    data = png_bytes(emoji_metadata.parent / emoji_pairs[0][1]["path"])
    post_image(client, data + bytes(200_000), filename="../../etc/evil.png")  # big: Bottle spools too
    post_image(client, b"not an image", status=400)
    assert len(made) == 2 and all(Path(path).parent == tmp_path for path in made)
    assert all(Path(path).name.startswith(upload.TEMPORARY_PREFIX) for path in made)
    assert list(tmp_path.iterdir()) == []
    assert not Path("/etc/evil.png").exists() and not (Path(os.getcwd()) / "evil.png").exists()


def test_model_load_failure_is_503(collection, emoji_pairs, emoji_metadata, monkeypatch):
    def broken(*args, **kwargs):
        raise backbones.BackboneError("weights missing")

    app = webtest.TestApp(make_app(collection))  # no embedder: the app would load the model itself
    monkeypatch.setattr("siamese.backbones.shared_embedder", broken)
    data = png_bytes(emoji_metadata.parent / emoji_pairs[0][1]["path"])
    response = post_image(app, data, status=503)
    assert "weights missing" in error_of(response)


def test_the_model_is_loaded_once_per_process_even_by_concurrent_first_uploads(monkeypatch):
    import threading
    import time

    loads = []

    def slow_loader(weights):
        loads.append(weights)
        time.sleep(0.2)  # long enough for every thread to ask while it loads
        return backbones.colour_histogram

    fake = backbones.Backbone("slow-test-model", 512, (8, 8), "a test double", slow_loader)
    monkeypatch.setitem(backbones.BACKBONES, fake.name, fake)
    got = []
    threads = [threading.Thread(target=lambda: got.append(backbones.shared_embedder(fake.name)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1 and len(got) == 8 and all(embedder is got[0] for embedder in got)
    batch = np.zeros((2, 8, 8, 3), np.uint8)
    np.testing.assert_array_equal(got[0](batch), backbones.colour_histogram(batch))
    backbones.unload_shared(fake.name)
    assert backbones.shared_embedder(fake.name) is not got[0] and len(loads) == 2  # loaded again
    backbones.unload_shared(fake.name)


def test_an_upload_can_be_filtered_like_a_urn_search(client, emoji_pairs, emoji_metadata):
    google, twitter = emoji_pairs[4]
    data = (emoji_metadata.parent / google["path"]).read_bytes()
    answer = client.post("/api/search", [("nns", "5"), ("step", "all,1"), ("filter", "maker:twitter")],
                         upload_files=[("image", "q.png", data, "image/png")]).json
    assert answer["filters"] == {"maker": ["twitter"]}
    found = [n for periods in answer["steps"].values() for p in periods for n in p["neighbours"]]
    assert found and all(n["maker"] == "twitter" for n in found)
    assert answer["steps"]["all"][0]["neighbours"][0]["urn"] == twitter["urn"]  # its twin, the other maker's
    also = client.post("/api/search?filter=maker:twitter&filter=maker:google", [("nns", "5")],
                       upload_files=[("image", "q.png", data, "image/png")]).json
    assert also["filters"] == {"maker": ["twitter", "google"]}
    refused = client.post("/api/search", [("filter", "colour:red")],
                          upload_files=[("image", "q.png", data, "image/png")], status=400).json
    assert refused["error"].startswith("no column 'colour' in this collection")


def test_facets_list_the_few_valued_columns_with_their_counts(client, collection):
    facets = {facet["name"]: dict(facet["values"]) for facet in client.get("/api/facets").json["facets"]}
    assert set(facets["maker"]) == {"google", "twitter"}
    assert sum(facets["maker"].values()) == collection.count
    assert all(2 <= len(values) <= 50 for values in facets.values())
    few = {facet["name"] for facet in collection.facets.facets(max_values=10)}
    assert "maker" in few and "name" not in few  # 25 names: a filter to type, not a list to choose from
    assert client.get("/api/facets?x=1", status=400).json["error"].startswith("unknown parameter 'x'")
