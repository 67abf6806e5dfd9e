"""The int8 codes (siamese/codes.py): quantisation, candidate selection, and the search that scans them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from annoy_indexer import AnnoyIndexer, SearchSettings, read_manifest
from siamese.codes import LEVELS, fit_scales, int8_dots, quantise, query_code, smallest
from siamese.collection import Collection
from siamese.index_dir import MANIFEST, file_checksum
from siamese.search import SCAN, SearchCore
from siamese.vector_store import VectorStore
from stores import make_store

pytestmark = pytest.mark.fast  # no model, no browser: make test-fast


def test_int8_dot_products_approximate_float_ones_within_the_rounding_bound():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((500, 64)).astype(np.float32) * np.linspace(3, 0.1, 64, dtype=np.float32)
    query = rng.standard_normal(64).astype(np.float32)
    scales = fit_scales(rows)
    codes = quantise(rows, scales)
    assert codes.dtype == np.int8 and np.abs(codes).max() == LEVELS
    code, factor = query_code(query, scales)
    approximate = factor * int8_dots(code, codes)
    exact = rows @ query
    # each code is within half a step of its value, and so is each query code: bound the sum of both errors
    bound = 0.5 * (np.abs(query) * scales).sum() + 0.5 * factor * np.abs(codes.astype(np.float32)).sum(axis=1)
    assert np.all(np.abs(approximate - exact) <= bound * 1.01 + 1e-5)
    assert np.corrcoef(approximate, exact)[0, 1] > 0.999  # and they rank alike
    assert int8_dots(code, codes[:0]).shape == (0,)


def test_rows_that_are_not_finite_become_zero_codes_and_do_not_change_the_scales():
    rows = np.array([[1.0, -2.0], [np.nan, 5.0], [0.5, np.inf]], dtype=np.float32)
    scales = fit_scales(rows)
    assert scales.tolist() == pytest.approx([1 / LEVELS, 2 / LEVELS])
    assert quantise(rows, scales).tolist() == [[LEVELS, -LEVELS], [0, 0], [0, 0]]
    assert fit_scales(np.zeros((3, 2), np.float32)).tolist() == [1.0, 1.0]  # never a division by zero
    assert fit_scales(rows, chunk=1).tolist() == scales.tolist()


@pytest.mark.parametrize("size, wanted", [(10, 20), (5000, 1), (5000, 67), (8500, 268), (426, 425)])
def test_smallest_holds_every_one_of_the_wanted_smallest_scores(size, wanted):
    for seed in range(20):
        rng = np.random.default_rng(seed)
        scores = rng.standard_normal(size).astype(np.float32)
        if seed % 4 == 0:
            scores = np.round(scores, 1)  # many ties
        if seed % 5 == 0:
            scores[rng.choice(size, size // 10, replace=False)] = np.inf  # unusable rows
        found = smallest(scores, wanted)
        assert len(found) == len(set(found.tolist())) >= min(wanted, size)
        assert len(found) <= max(4 * wanted, size if size <= wanted else 0)
        if size > wanted:
            kth = np.partition(scores, wanted - 1)[wanted - 1]
            truly = np.flatnonzero(scores < kth)  # every score strictly below the wanted-th is in
            assert set(truly.tolist()) <= set(found.tolist())
            assert np.sum(scores[found] <= kth) >= wanted


@pytest.fixture(scope="module")
def long_store(tmp_path_factory):
    """3,000 rows over 1948-1961 (whitened descriptors, a 12-d projection): periods big enough to scan."""
    base = tmp_path_factory.mktemp("codes")
    store_dir = make_store(base / "vectors", n=3000, dim=48, seed=11)
    indexer = AnnoyIndexer(store_dir, base / "indices", index_dimensions=12, verbose=False,
                           search_settings=SearchSettings(brute_force_max_rows=0))
    indexer.build()
    return store_dir, base / "indices"


def test_a_query_for_several_step_sizes_scans_the_codes_once_and_answers_as_separate_ones(long_store):
    store_dir, index_dir = long_store
    store = VectorStore(store_dir)
    core = SearchCore(store, index_dir, settings=SearchSettings(brute_force_max_rows=0))
    assert core.codes is not None and core.descriptor_codes is not None
    years = store.years()
    assert np.all(np.diff(core.codes.years) >= 0)
    assert np.array_equal(core.codes.years, years[core.codes.order])
    for index in core.indices["1"] + core.indices["10"]:  # a period's rows are one span of the codes
        start, stop = index.span
        assert sorted(core.codes.order[start:stop].tolist()) == sorted(index.rows.tolist())
    row = 123
    together = core.query_for_row(row)
    both = core.search(together, {"all": 10, "10": 10, "1": 10})
    assert together.scored == (0, store.count)
    indices = [*core.indices["1"], *core.indices["10"], *core.indices["all"]]
    routes = [core._route(index, 10).how for index in indices]
    assert routes.count(SCAN) >= 12  # the 11 years with images, the decades and the whole collection
    for key in ("all", "10", "1"):
        alone = core.search(core.query_for_row(row), {key: 10})[key]
        for mixed, single in zip(both[key], alone, strict=True):
            assert mixed.rows.tolist() == single.rows.tolist()
            assert np.array_equal(mixed.distances, single.distances)


def test_recall_at_10_of_the_scanned_codes_against_exact_search(long_store):
    store_dir, index_dir = long_store
    store = VectorStore(store_dir)
    core = SearchCore(store, index_dir, settings=SearchSettings(brute_force_max_rows=0))
    descriptors = np.asarray(core.vectors, np.float64)
    years = store.years()
    hits = total = 0
    for row in range(0, store.count, 50):
        found = core.search(core.query_for_row(row), {"1": 10, "all": 10})
        for period in [*found["1"], *found["all"]]:
            members = np.flatnonzero((years >= period.period.start) & (years <= period.period.end))
            members = members[members != row]
            exact = np.sqrt(((descriptors[members] - descriptors[row]) ** 2).sum(axis=1))
            expected = members[np.argsort(exact, kind="stable")[:10]]
            hits += len(set(expected.tolist()) & set(period.rows.tolist()))
            total += len(expected)
            assert np.all(np.diff(period.distances) >= 0)
    assert hits / total >= 0.99, f"recall@10 {hits / total:.4f}"


def test_a_directory_built_before_the_codes_gets_them_and_loses_its_scan_files(tmp_path):
    """An older build: no codes, a float32 scan file per index. Opening it builds the codes only: the
    Annoy files stay as they are, the scan files are deleted, the answers are those of a fresh build."""
    store_dir = make_store(tmp_path / "vectors", n=800, dim=32, seed=4)
    for directory in ("fresh", "old"):
        AnnoyIndexer(store_dir, tmp_path / directory, index_dimensions=8, verbose=False).build()
    fresh = Collection(store_dir, tmp_path / "fresh")
    old = tmp_path / "old"
    manifest = read_manifest(old)
    del manifest["codes"]
    entry = manifest["indices"]["all"]
    scan = old / entry["annoy"].replace(".ann", ".scan.npy")
    np.save(scan, np.zeros((entry["count"], 3), np.float32))
    entry["scan"] = scan.name
    entry["sizes"]["scan"], entry["checksums"]["scan"] = scan.stat().st_size, file_checksum(scan)
    (old / MANIFEST).write_text(json.dumps(manifest))
    annoy_files = {path.name: path.stat().st_mtime_ns for path in old.glob("*.ann")}
    reopened = Collection(store_dir, old)
    assert read_manifest(old)["codes"] and not scan.exists()
    assert "scan" not in read_manifest(old)["indices"]["all"]
    assert {path.name: path.stat().st_mtime_ns for path in old.glob("*.ann")} == annoy_files
    for urn in VectorStore(store_dir).urns[::97]:
        assert reopened.neighbours(urn, 5, (None, 10, 1)) == fresh.neighbours(urn, 5, (None, 10, 1))


def test_a_filter_leaves_rows_out_of_every_period_and_the_rest_ranks_as_exact_search(long_store):
    store_dir, index_dir = long_store
    store = VectorStore(store_dir)
    core = SearchCore(store, index_dir, settings=SearchSettings(brute_force_max_rows=0))
    allowed = np.random.default_rng(2).random(store.count) < 0.3  # a filter keeping 30 % of the rows
    descriptors = np.asarray(core.vectors, np.float64)
    years = store.years()
    hits = total = 0
    for row in range(0, store.count, 97):
        found = core.search(core.query_for_row(row), {"all": 10, "10": 10, "1": 10}, allowed=allowed)
        for period in [*found["all"], *found["10"], *found["1"]]:
            assert allowed[period.rows].all()
            members = np.flatnonzero((years >= period.period.start) & (years <= period.period.end) & allowed)
            members = members[members != row]
            exact = np.sqrt(((descriptors[members] - descriptors[row]) ** 2).sum(axis=1))
            expected = members[np.argsort(exact, kind="stable")[:10]]
            assert len(period.rows) == len(expected)
            hits += len(set(expected.tolist()) & set(period.rows.tolist()))
            total += len(expected)
    assert hits / total >= 0.99, f"recall@10 within the filter {hits / total:.4f}"
    unfiltered = core.query_for_row(5)
    core.search(unfiltered, {"1": 10}, allowed=allowed)
    assert np.isfinite(unfiltered.scores).sum() > allowed.sum()  # the query's own scores kept unfiltered
