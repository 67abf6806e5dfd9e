"""Reprint verification on real images (Google's emoji as the advertisements' pictures): another scan
of an advertisement is the same image, another advertisement of the same template is not, although
they share frame, headline and layout; through the collection and the API, verified reprints come
first, are marked and counted per period, on thumbnails or on the originals."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import webtest
from PIL import Image

from app import make_app
from conftest import ROOT, write_csv
from extract_vectors import extract_vectors
from make_thumbnails import make_thumbnails
from siamese.collection import Collection
from siamese.index_build import IndexConfig, build_indices
from siamese.reprints import DEFAULT_RULE, check_reprint, image_features
from siamese.vector_store import VectorStore

sys.path.insert(0, str(ROOT / "bench"))
from reprints import rescan, template_ads  # noqa: E402

N_ADS, N_COPIES = 8, 3


@pytest.fixture(scope="module")
def ads(emoji_rows, emoji_metadata) -> list[Image.Image]:
    """Advertisements of one template, each with another emoji (no flags or skin tones: those are
    one drawing in other colours) and its own text."""
    rows = [row for row in emoji_rows if row["maker"] == "google" and "skin" not in row["name"].lower()
            and "flag" not in row["name"].lower()]
    chosen = np.random.default_rng(3).choice(len(rows), N_ADS, replace=False)
    return template_ads([Image.open(emoji_metadata.parent / rows[i]["path"]) for i in chosen])


def test_another_scan_or_a_halftone_print_of_an_advertisement_is_a_reprint(ads):
    rng = np.random.default_rng(0)
    for number, ad in enumerate(ads):
        original = image_features(ad)
        for profile in ("rescan", "halftone"):
            check = check_reprint(image_features(rescan(ad, profile, rng)), original)
            assert check.reprint, (number, profile, check)
            assert check.coverage > 0.8 and check.agreement >= DEFAULT_RULE.min_agreement


def test_another_advertisement_of_the_same_template_is_not_a_reprint(ads):
    copies = [image_features(rescan(ad, "rescan", np.random.default_rng(number)))
              for number, ad in enumerate(ads)]
    originals = [image_features(ad) for ad in ads]
    checks = [check_reprint(copies[i], originals[j]) for i in range(N_ADS) for j in range(N_ADS) if i != j]
    assert not any(check.reprint for check in checks), [c for c in checks if c.reprint]
    # they do share the layout: enough keypoints agree under one geometry to fool an inlier count
    assert np.mean([check.inliers >= DEFAULT_RULE.min_inliers for check in checks]) >= 0.8, checks


@pytest.fixture(scope="module")
def ad_collection(tmp_path_factory, ads):
    """The advertisements (1950-1957) and other scans of the first N_COPIES (1960-1962), under the
    colour-histogram model (no TensorFlow: what is checked here is the verification, not the vectors),
    with thumbnails and indices."""
    directory = tmp_path_factory.mktemp("ads")
    (directory / "images").mkdir()
    rows = []
    for number, ad in enumerate(ads):
        ad.save(directory / "images" / f"ad{number}.png")
        rows.append({"urn": f"ad:{number}", "path": f"images/ad{number}.png", "date": str(1950 + number)})
    for number in range(N_COPIES):
        rescan(ads[number], "rescan", np.random.default_rng(10 + number)).save(
            directory / "images" / f"copy{number}.jpg", quality=90)
        rows.append({"urn": f"copy:{number}", "path": f"images/copy{number}.jpg",
                     "date": str(1960 + number)})
    csv_path = write_csv(directory / "metadata.csv", rows)
    extract_vectors(csv_path, directory / "vectors", model="colour-histogram", progress=False)
    make_thumbnails(csv_path, directory / "thumbs", workers=1, progress=False)
    build_indices(VectorStore(directory / "vectors"), directory / "indices",
                  IndexConfig(step_sizes=(10,), descriptor="raw", index_dimensions=8), verbose=False)
    return directory


def collection_of(directory, **keywords) -> Collection:
    return Collection(directory / "vectors", directory / "indices", directory / "thumbs", **keywords)


@pytest.mark.parametrize("source", ["thumbnails", "originals"])
def test_verified_reprints_come_first_marked_and_counted_per_period(ad_collection, source):
    keywords = {"images_root": ad_collection} if source == "originals" else {}
    collection = collection_of(ad_collection, **keywords)
    total = N_ADS + N_COPIES
    for number in range(N_COPIES):
        answer = collection.neighbours(f"ad:{number}", 3, [None, 10], reprints=total - 1)
        assert answer["reprints"]["images"] == source and answer["reprints"]["checked"] == total - 1
        assert answer["reprints"]["found"] == 1, answer["reprints"]
        first = answer["steps"]["all"][0]["neighbours"][0]
        assert first["urn"] == f"copy:{number}" and first["reprint"] is True and first["inliers"] >= 8
        assert all(n["reprint"] is False for n in answer["steps"]["all"][0]["neighbours"][1:])
        counts = {period["period"]: period["reprints"] for period in answer["steps"]["10"]}
        assert counts == {"1950-1959": 0, "1960-1969": 1}
        sixties = answer["steps"]["10"][1]["neighbours"]
        assert sixties[0]["urn"] == f"copy:{number}" and sixties[0]["reprint"] is True
    # the other way round: the copy finds its advertisement, and nothing else
    answer = collection.neighbours("copy:0", 5, [None], reprints=total - 1)
    assert [n["urn"] for n in answer["steps"]["all"][0]["neighbours"] if n["reprint"]] == ["ad:0"]
    # without reprints the answer is as before: no verdicts, no counts
    plain = collection.neighbours("ad:0", 3, [None, 10])
    assert "reprints" not in plain and "reprint" not in plain["steps"]["all"][0]["neighbours"][0]
    assert "reprints" not in plain["steps"]["10"][0]


def test_the_api_checks_reprints_of_urns_and_uploads_and_refuses_what_it_cannot(ad_collection, ads):
    client = webtest.TestApp(make_app(collection_of(ad_collection)))
    info = client.get("/api/collection").json
    assert info["reprints"]["images"] == "thumbnails"
    answer = client.get("/api/neighbours", {"urn": "ad:1", "nns": "2", "reprints": "10"}).json
    assert answer["steps"]["all"][0]["neighbours"][0]["urn"] == "copy:1"
    assert answer["steps"]["all"][0]["neighbours"][0]["reprint"] is True
    for bad in ("abc", "-1", "101", "1.5"):
        error = client.get("/api/neighbours", {"urn": "ad:1", "reprints": bad}, status=400).json
        assert "reprints must be a whole number from 0 to 100" in error["error"]
    # an upload: another scan of advertisement 2, never seen by the collection
    buffer = io.BytesIO()
    rescan(ads[2], "halftone", np.random.default_rng(5)).save(buffer, "PNG")
    found = client.post("/api/search", params=[("nns", "3"), ("reprints", "10")],
                        upload_files=[("image", "scan.png", buffer.getvalue(), "image/png")]).json
    verified = [n["urn"] for n in found["steps"]["all"][0]["neighbours"] if n.get("reprint")]
    # the 10 nearest are mostly near misses (the template's other advertisements): it looked further
    assert set(verified) == {"ad:2", "copy:2"} and found["reprints"]["checked"] == N_ADS + N_COPIES
    # no thumbnails and no images root: nothing to check on, said in JSON
    bare = webtest.TestApp(make_app(Collection(ad_collection / "vectors", ad_collection / "indices")))
    assert bare.get("/api/collection").json["reprints"]["images"] is None
    error = bare.get("/api/neighbours", {"urn": "ad:1", "reprints": "5"}, status=400).json
    assert "--thumbnails" in error["error"] and "--images-root" in error["error"]
    error = bare.post("/api/search", params=[("reprints", "5")],
                      upload_files=[("image", "scan.png", buffer.getvalue(), "image/png")], status=400).json
    assert "--images-root" in error["error"]
    assert bare.get("/api/neighbours", {"urn": "ad:1"}).json["steps"]["all"][0]["neighbours"]


def test_notebooks_ask_for_reprints_through_query_all(ad_collection):
    from annoy_indexer import AnnoyIndexer

    indexer = AnnoyIndexer(ad_collection / "vectors", ad_collection / "indices", step_sizes=[10],
                           verbose=False, descriptor="raw", index_dimensions=8,
                           thumbnail_dir=ad_collection / "thumbs")
    result = indexer.query_all("ad:1", [2], reprints=10)
    assert result["reprints"]["found"] == 1 and result["reprints"]["images"] == "thumbnails"
    sixties = {period["period"]: period for period in result["steps"]["10"]}["1960-1969"]
    assert sixties["reprints"] == 1 and sixties["neighbours"][0]["urn"] == "copy:1"
    assert sixties["neighbours"][0]["reprint"] is True
    assert "reprints" not in indexer.query_all("ad:1", [2])  # as the original answered
    for bad in (-1, 101, 2.5, True):
        with pytest.raises(ValueError, match="reprints must be a whole number from 0 to 100"):
            indexer.query_all("ad:1", [2], reprints=bad)
    bare = AnnoyIndexer(ad_collection / "vectors", ad_collection / "indices", step_sizes=[10],
                        verbose=False, descriptor="raw", index_dimensions=8)
    with pytest.raises(ValueError, match="--thumbnails"):
        bare.query_all("ad:1", [2], reprints=10)
