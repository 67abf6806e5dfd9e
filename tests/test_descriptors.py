"""The descriptor transform: fitted on the collection, saved with the indices, applied alike to stored
rows and to queries; raw directories of before keep working as they were."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from annoy_indexer import AnnoyIndexer, exact_distances, read_manifest
from siamese.descriptors import IDENTITY, DescriptorTransform, fit_descriptor_transform
from siamese.index_build import IndexConfig, build_indices
from siamese.index_dir import IndexDamaged, read_descriptors, read_transform
from siamese.search import SearchCore, SearchSettings
from siamese.vector_store import VectorStore, VectorStoreWriter
from stores import make_store, synthetic

pytestmark = pytest.mark.fast  # no model, no browser: make test-fast


def test_the_fit_whitens_the_collection_into_unit_descriptors():
    rng = np.random.default_rng(0)
    # a few loud directions (paper tone, ink) over many quiet ones, non-negative like pooled activations
    vectors = np.abs(rng.normal(size=(4000, 64)) * np.geomspace(30, 0.1, 64)).astype(np.float32)
    transform, record = fit_descriptor_transform(vectors, "whitened", 32)
    descriptors = transform.apply(vectors)
    assert descriptors.shape == (4000, 32) and descriptors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(descriptors, axis=1), 1, rtol=1e-5)
    assert record["dimensions"] == 32 and record["fitted_on"] == 4000 and 0 < record["variance_kept"] < 1
    # whitened: the loudest direction no longer dominates the spread (with shrinkage, not fully flat)
    spread = descriptors.var(axis=0)
    raw_spread = np.sort(vectors.var(axis=0))[::-1]
    assert spread.max() / spread[:16].min() < 4 < raw_spread[0] / raw_spread[15]
    # deterministic, one vector like a batch of one
    again, _ = fit_descriptor_transform(vectors, "whitened", 32)
    assert again.sha1 == transform.sha1
    np.testing.assert_allclose(transform.apply(vectors[5]), descriptors[5], rtol=1e-6, atol=1e-7)


def test_a_fit_on_fewer_rows_than_dimensions_keeps_what_they_can_span():
    vectors = np.abs(np.random.default_rng(1).normal(size=(20, 64))).astype(np.float32)
    transform, record = fit_descriptor_transform(vectors, "whitened", 512)
    assert transform.dimensions(64) == record["dimensions"] == 19
    assert np.isfinite(transform.apply(vectors)).all()


def test_unusable_rows_are_left_out_of_the_fit_and_get_no_descriptor():
    vectors = np.abs(np.random.default_rng(2).normal(size=(300, 16))).astype(np.float32)
    vectors[3] = np.nan
    vectors[4, 0] = 3e38
    transform, record = fit_descriptor_transform(vectors, "whitened", 8)
    assert record["fitted_on"] == 298
    descriptors = transform.apply(vectors)
    assert np.isnan(descriptors[[3, 4]]).all() and np.isfinite(np.delete(descriptors, [3, 4], axis=0)).all()


def test_raw_is_the_identity_and_unknown_descriptors_are_refused():
    vectors = np.random.default_rng(3).normal(size=(10, 8)).astype(np.float32)
    transform, record = fit_descriptor_transform(vectors, "raw", 4)
    assert transform is IDENTITY and record == {"descriptor": "raw"}
    np.testing.assert_array_equal(transform.apply(vectors), vectors)
    with pytest.raises(ValueError, match="descriptor must be one of 'raw', 'whitened'"):
        fit_descriptor_transform(vectors, "pca", 4)
    with pytest.raises(ValueError, match="descriptor must be one of"):
        IndexConfig(descriptor="sqrt")


def test_the_saved_transform_is_reloaded_exactly_and_applied_alike_to_rows_and_queries(tmp_path):
    store_dir = make_store(tmp_path / "vectors", n=400, dim=16)
    store = VectorStore(store_dir)
    build_indices(store, tmp_path / "indices", IndexConfig(descriptor_dimensions=12), verbose=False)
    manifest = read_manifest(tmp_path / "indices")
    assert manifest["descriptor"] == "whitened" and manifest["descriptor_dimensions"] == 12
    recorded = manifest["transform"]
    assert recorded["file"] == f"transform.{recorded['sha1'][:12]}.npy"  # named by its fingerprint
    transform = read_transform(tmp_path / "indices", recorded)
    refitted, _ = fit_descriptor_transform(store.vectors, "whitened", 12)
    assert transform.sha1 == refitted.sha1 == recorded["sha1"]
    # the descriptors the build wrote are the saved transform of the stored rows
    written = read_descriptors(tmp_path / "indices", manifest["descriptors"], store.count, 12)
    np.testing.assert_allclose(written, transform.apply(np.asarray(store.vectors)), rtol=1e-6, atol=1e-7)
    # a query by a row's stored vector ranks like the query by its urn (itself first, at distance 0);
    # searched exhaustively, so that only the descriptors can make a difference
    indexer = AnnoyIndexer(store_dir, tmp_path / "indices", verbose=False,
                           search_settings=SearchSettings(brute_force_max_rows=1000))
    for urn in store.urns[::37]:
        by_urn = indexer.query(urn, n=8)
        by_vector = indexer.query_vector(np.asarray(store.vectors[store.row_of(urn)]), n=9)
        assert by_vector[0]["urn"] == urn and by_vector[0]["distance"] == pytest.approx(0, abs=1e-5)
        assert [n["urn"] for n in by_vector[1:]] == [n["urn"] for n in by_urn]
        np.testing.assert_allclose([n["distance"] for n in by_vector[1:]], [n["distance"] for n in by_urn],
                                   rtol=1e-5, atol=1e-6)
        # and the distances are those between descriptors
        row = store.row_of(urn)
        rows = [store.row_of(n["urn"]) for n in by_urn]
        expected = exact_distances(written[rows], written[row], "euclidean")
        np.testing.assert_allclose([n["distance"] for n in by_urn], expected, rtol=1e-5, atol=1e-6)


def test_a_changed_transform_or_descriptors_file_is_refused_then_rebuilt(tmp_path):
    store_dir = make_store(tmp_path / "vectors", n=300, dim=16)
    indexer = AnnoyIndexer(store_dir, tmp_path / "indices", verbose=False)
    indexer.build()
    clean = indexer.query("urn:test:3", n=5)
    for record in ("transform", "descriptors"):
        path = tmp_path / "indices" / read_manifest(tmp_path / "indices")[record]["file"]
        data = bytearray(path.read_bytes())
        data[-3] ^= 0x40
        path.write_bytes(bytes(data))
        with pytest.raises(IndexDamaged, match=path.name):
            SearchCore(VectorStore(store_dir), tmp_path / "indices")
        assert AnnoyIndexer(store_dir, tmp_path / "indices", verbose=False).query("urn:test:3", n=5) == clean


def test_appended_rows_keep_the_transform_and_get_their_descriptors(tmp_path):
    store_dir = make_store(tmp_path / "vectors", n=400, dim=16)
    indexer = AnnoyIndexer(store_dir, tmp_path / "indices", verbose=False)
    indexer.build()
    before = read_manifest(tmp_path / "indices")
    vectors, items = synthetic(30, 16, seed=9)
    for item in items:
        item["urn"] += "-new"
    with VectorStoreWriter(store_dir, "test-model", 16) as writer:
        writer.append(vectors, items)
    report = indexer.build()
    after = read_manifest(tmp_path / "indices")
    assert after["transform"] == before["transform"]  # fitted on 400 of 430 rows: kept
    assert after["descriptors"]["file"] != before["descriptors"]["file"]
    assert after["descriptors"]["count"] == 430
    assert 0 < report["built"] < report["built"] + report["up_to_date"]  # only the periods the rows joined
    assert not (tmp_path / "indices" / before["descriptors"]["file"]).exists()  # collected
    store = VectorStore(store_dir)
    transform = read_transform(tmp_path / "indices", after["transform"])
    written = read_descriptors(tmp_path / "indices", after["descriptors"], store.count, 16)
    np.testing.assert_allclose(written[400:], transform.apply(vectors), rtol=1e-6, atol=1e-7)
    assert indexer.query(items[0]["urn"], n=3)


def test_a_directory_built_before_descriptors_existed_keeps_serving_raw(tmp_path):
    """Index directories of before record no descriptor: they hold raw indices and are used as such,
    not rebuilt; asking them for whitened descriptors is refused until --force."""
    store_dir = make_store(tmp_path / "vectors", n=300, dim=16)
    build_indices(VectorStore(store_dir), tmp_path / "indices", IndexConfig(descriptor="raw"), verbose=False)
    path = tmp_path / "indices" / "index.json"
    manifest = json.loads(path.read_text())
    for key in ("descriptor", "descriptor_dimensions", "transform", "descriptors"):
        del manifest[key]
    path.write_text(json.dumps(manifest))
    files = sorted(p.name for p in (tmp_path / "indices").iterdir())
    indexer = AnnoyIndexer(store_dir, tmp_path / "indices", verbose=False)
    found = indexer.query("urn:test:8", n=4)
    store = VectorStore(store_dir)
    vectors = np.asarray(store.vectors)
    expected = exact_distances(vectors[[store.row_of(n["urn"]) for n in found]], vectors[8], "euclidean")
    np.testing.assert_allclose([n["distance"] for n in found], expected, rtol=1e-5)
    assert sorted(p.name for p in (tmp_path / "indices").iterdir()) == files  # nothing rebuilt
    with pytest.raises(ValueError, match="descriptor='raw', not descriptor='whitened'"):
        AnnoyIndexer(store_dir, tmp_path / "indices", descriptor="whitened", verbose=False).build()
    AnnoyIndexer(store_dir, tmp_path / "indices", descriptor="whitened", verbose=False).build(force=True)
    assert read_manifest(tmp_path / "indices")["descriptor"] == "whitened"


def test_a_saved_transform_that_is_not_a_matrix_is_refused():
    with pytest.raises(ValueError, match="not a saved transform"):
        DescriptorTransform.from_array("whitened", 0.5, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="not a saved transform"):
        DescriptorTransform.from_array("whitened", 0.5, np.full((3, 4), np.nan, np.float32))


def test_the_cli_builds_each_descriptor(tmp_path):
    from annoy_indexer import main

    store_dir = make_store(tmp_path / "vectors", n=120, dim=16)
    assert main(["build", str(store_dir), str(tmp_path / "raw"), "--descriptor", "raw", "--quiet"]) == 0
    assert main(["build", str(store_dir), str(tmp_path / "w"), "--descriptor-dimensions", "8",
                 "--quiet"]) == 0
    assert read_manifest(tmp_path / "raw")["descriptor"] == "raw"
    whitened = read_manifest(tmp_path / "w")
    assert (whitened["descriptor"], whitened["descriptor_dimensions"], whitened["index_dimensions"]) \
        == ("whitened", 8, 8)
    assert Path(tmp_path / "w" / whitened["descriptors"]["file"]).stat().st_size > 120 * 8 * 4
