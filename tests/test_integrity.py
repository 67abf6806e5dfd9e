"""No answer silently wrong: damaged stores and index files are named and refused (or rebuilt), never
served and never handed to Annoy; unusable vectors are rejected row by row. Real files, fast tier."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from annoy_indexer import AnnoyIndexer, verify_collection
from app_support import HistogramCollection
from siamese import backbones
from siamese.collection import Collection
from siamese.index_build import IndexConfig, build_indices
from siamese.index_dir import IndexDamaged, read_manifest
from siamese.search import SearchCore
from siamese.vector_store import CHECKSUMS, MANIFEST, StoreError, VectorStore, VectorStoreWriter
from stores import make_store, synthetic

pytestmark = pytest.mark.fast
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def copy(histogram_collection: HistogramCollection, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the fast tier's collection (vectors, indices), free to damage."""
    vector_dir, index_dir = tmp_path / "vectors", tmp_path / "indices"
    shutil.copytree(histogram_collection.vector_dir, vector_dir)
    shutil.copytree(histogram_collection.index_dir, index_dir)
    return vector_dir, index_dir


def answers(vector_dir: Path, index_dir: Path, urns: list[str]) -> list[dict]:
    collection = Collection(vector_dir, index_dir)
    return [collection.neighbours(urn, 5, [None, 10, 1]) for urn in urns]


def flip(path: Path, offset: int, value: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[offset] = (data[offset] ^ 0x40) if value is None else value
    path.write_bytes(bytes(data))


def verify_cli(vector_dir: Path, index_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "annoy_indexer.py"), "verify", str(vector_dir),
                           str(index_dir)], capture_output=True, text=True, timeout=120)


def verify(vector_dir: Path, index_dir: Path) -> int:
    """`annoy_indexer.py verify`'s exit status, in this process (the command line is tested once)."""
    return verify_collection(vector_dir, index_dir)


# ------------------------------------------------------------------------------ the vector store

def test_a_flipped_byte_in_the_vectors_is_an_error_naming_the_rows(copy):
    vector_dir, index_dir = copy
    assert verify_cli(vector_dir, index_dir).returncode == 0
    flip(vector_dir / "vectors.f32", 512 * 4 * 10 + 7)  # row 10
    with pytest.raises(StoreError, match=r"vectors.f32: rows 0-59 do not match"):
        Collection(vector_dir, index_dir)
    with pytest.raises(StoreError, match="do not match"):
        AnnoyIndexer(vector_dir, index_dir, verbose=False).query_all("urn:drawing:000")
    done = verify_cli(vector_dir, index_dir)
    assert done.returncode == 1 and "damaged:" in done.stdout and "Traceback" not in done.stderr


def test_verify_of_directories_that_hold_nothing_is_a_usage_error(copy, tmp_path):
    vector_dir, index_dir = copy
    for arguments in ((tmp_path / "nothing", index_dir), (vector_dir, tmp_path / "nothing")):
        done = verify_cli(*arguments)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
        assert done.stderr.startswith("annoy_indexer.py: error:") and "nothing" in done.stderr


def test_a_year_changed_in_the_items_is_an_error_not_a_new_timeline(copy):
    """One flipped byte turned 1976 into 81976 and the collection into "1945-81976"."""
    vector_dir, index_dir = copy
    data = (vector_dir / "items.jsonl").read_bytes()
    flip(vector_dir / "items.jsonl", data.index(b'"year": 19') + len(b'"year": '), ord("8"))
    with pytest.raises(StoreError, match=r"items.jsonl: rows .* do not match"):
        Collection(vector_dir, index_dir)


def test_a_truncated_vector_file_is_named(copy):
    vector_dir, index_dir = copy
    with open(vector_dir / "vectors.f32", "r+b") as handle:
        handle.truncate(1000)
    with pytest.raises(StoreError, match=r"vectors.f32 is 1,000 bytes but store.json commits .* truncated"):
        VectorStore(vector_dir)


@pytest.mark.parametrize("change, phrase", [
    (lambda manifest: {key: value for key, value in manifest.items() if key != "items_bytes"},
     "'items_bytes'"),
    (lambda manifest: [manifest], "not a siamese-vector-store"),
    (lambda manifest: {**manifest, "count": "60"}, "'count' must be a whole number"),
])
def test_a_damaged_store_manifest_is_a_message(copy, change, phrase):
    vector_dir, _ = copy
    manifest = json.loads((vector_dir / MANIFEST).read_text())
    (vector_dir / MANIFEST).write_text(json.dumps(change(manifest)))
    with pytest.raises(StoreError, match=phrase):
        VectorStore(vector_dir)


def test_a_store_from_before_checksums_gets_them_from_its_next_writer(tmp_path):
    store_dir = make_store(tmp_path / "vectors", n=50)
    manifest = json.loads((store_dir / MANIFEST).read_text())
    del manifest["checksums_bytes"]
    (store_dir / MANIFEST).write_text(json.dumps(manifest))
    (store_dir / CHECKSUMS).unlink()
    lines = (store_dir / "items.jsonl").read_bytes().splitlines(keepends=True)
    damaged = lines[:3] + [json.dumps({"urn": "x", "date": "1950", "path": "p"}).encode() + b"\n"] + lines[4:]
    (store_dir / "items.jsonl").write_bytes(b"".join(damaged))
    manifest["items_bytes"] = sum(map(len, damaged))
    (store_dir / MANIFEST).write_text(json.dumps(manifest))
    store = VectorStore(store_dir)
    assert not store.has_checksums
    with pytest.raises(StoreError, match="items.jsonl line 4 is damaged"):
        store.urns  # noqa: B018
    (store_dir / "items.jsonl").write_bytes(b"".join(lines))
    manifest["items_bytes"] = sum(map(len, lines))
    (store_dir / MANIFEST).write_text(json.dumps(manifest))
    VectorStoreWriter(store_dir, "test-model", 16).close()  # records checksums for what it holds
    store = VectorStore(store_dir)
    assert store.has_checksums and len(store.batches()) == 1
    store.verify()


def test_a_writer_cleans_temporary_files_that_a_killed_writer_left(tmp_path):
    store_dir = make_store(tmp_path / "vectors", n=20)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a pid that no longer runs
    leftover = store_dir / f".{MANIFEST}.{dead}-1.tmp"
    leftover.write_text("half a manifest")
    running = store_dir / f".{MANIFEST}.{os.getpid()}-2.tmp"  # a live writer's: not ours to delete
    running.write_text("being written")
    VectorStoreWriter(store_dir, "test-model", 16).close()
    assert not leftover.exists() and running.exists()


@pytest.mark.parametrize("value", [np.nan, np.inf, 1e20, -3e38])
def test_unusable_vectors_are_refused_by_the_store(tmp_path, value):
    vectors, items = synthetic(3, 16)
    vectors[1, 4] = value
    with VectorStoreWriter(tmp_path / "vectors", "test-model", 16) as writer, \
            pytest.raises(ValueError, match="out-of-range"):
        writer.append(vectors, items)
    assert VectorStore(tmp_path / "vectors").count == 0


def test_extraction_rejects_rows_the_model_got_wrong_and_keeps_the_others(histogram_collection, tmp_path):
    from extract_vectors import extract_vectors

    poisoned = histogram_collection.urns[5]

    def embedder(batch: np.ndarray) -> np.ndarray:
        vectors = backbones.colour_histogram(batch)
        vectors[5] = 1e20  # the sixth image of the first batch
        return vectors

    report = extract_vectors(histogram_collection.csv_path, tmp_path / "vectors", model="colour-histogram",
                             embedder=embedder, batch_size=64, progress=False)
    store = VectorStore(tmp_path / "vectors")
    assert store.count == len(histogram_collection.urns) - 1 and poisoned not in store
    assert [(urn, reason) for urn, _, reason in report.rejects] == [
        (poisoned, "the model gave NaN, infinite or out-of-range values")]
    assert "out-of-range" in (tmp_path / "vectors" / "rejects.csv").read_text()


def test_the_import_rejects_out_of_range_vectors_file_by_file(tmp_path):
    from import_siamese import REPORT_FILE, import_siamese

    old = tmp_path / "old" / "1950"
    old.mkdir(parents=True)
    for name, scale in (("good", 1.0), ("huge", 1e20), ("inf", np.inf)):
        np.save(old / f"ddd-000000001-mpeg21-{name}.npy", np.full(2048, scale, np.float32))
    report = import_siamese(tmp_path / "old", tmp_path / "vectors", progress=False)
    assert report.imported == 1
    text = (tmp_path / "vectors" / REPORT_FILE).read_text()
    assert text.count("out-of-range") == 2


# ------------------------------------------------------------------------------ the index files

def damage_file(path: Path, how: str) -> None:
    size = path.stat().st_size
    if how == "zero":
        path.write_bytes(bytes(size))
    elif how == "truncate":
        with open(path, "r+b") as handle:
            handle.truncate(size // 2)
    elif how == "flip":
        flip(path, size - 9)
    else:  # garbage
        path.write_bytes(np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes())


@pytest.mark.parametrize("how", ["zero", "truncate", "flip", "garbage"])
@pytest.mark.parametrize("kind", ["annoy", "rows", "projection", "codes/projection", "codes/extra",
                                  "codes/descriptors", "codes/scales"])
def test_a_damaged_index_file_is_refused_then_rebuilt_and_answers_stay_right(copy, histogram_collection,
                                                                            kind, how):
    vector_dir, index_dir = copy
    urns = histogram_collection.urns[::11]
    clean = answers(vector_dir, index_dir, urns)
    manifest = read_manifest(index_dir)
    if kind == "projection":
        name = manifest["projection"]["file"]
    elif kind.startswith("codes/"):
        name = manifest["codes"]["files"][kind.split("/")[1]]
    else:
        name = manifest["indices"]["10/1950"][kind]
    damage_file(index_dir / name, how)
    with pytest.raises(IndexDamaged, match=name.split(".")[0]):
        SearchCore(VectorStore(vector_dir), index_dir)
    assert verify(vector_dir, index_dir) == 1
    assert answers(vector_dir, index_dir, urns) == clean  # rebuilt at start, then served right
    assert verify(vector_dir, index_dir) == 0


def test_a_zeroed_annoy_file_of_a_large_index_is_never_mapped(tmp_path):
    """Annoy crashes the process on such a file: the checksum refuses it before Annoy sees it."""
    store_dir = make_store(tmp_path / "vectors", n=600, dim=16)
    build_indices(VectorStore(store_dir), tmp_path / "indices", IndexConfig(step_sizes=(10,)), verbose=False)
    name = read_manifest(tmp_path / "indices")["indices"]["all"]["annoy"]
    damage_file(tmp_path / "indices" / name, "zero")
    script = (f"import sys; sys.path[:0] = [{str(ROOT)!r}]\n"
              "from siamese.search import SearchCore\nfrom siamese.vector_store import VectorStore\n"
              f"SearchCore(VectorStore({str(store_dir)!r}), {str(tmp_path / 'indices')!r})\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "IndexDamaged" in done.stderr
    assert "does not match its checksum" in done.stderr


def test_a_manifest_entry_without_its_count_is_rebuilt(copy, histogram_collection):
    vector_dir, index_dir = copy
    clean = answers(vector_dir, index_dir, histogram_collection.urns[:3])
    manifest = read_manifest(index_dir)
    del manifest["indices"]["1/1950"]["count"]
    (index_dir / "index.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexDamaged, match="entry of index 1/1950 is damaged"):
        SearchCore(VectorStore(vector_dir), index_dir)
    assert answers(vector_dir, index_dir, histogram_collection.urns[:3]) == clean


def test_indices_of_an_older_version_without_checksums_are_rebuilt(copy, histogram_collection):
    vector_dir, index_dir = copy
    clean = answers(vector_dir, index_dir, histogram_collection.urns[:3])
    manifest = read_manifest(index_dir)
    for entry in manifest["indices"].values():
        entry.pop("checksums", None)
    del manifest["projection"]["checksum"]
    (index_dir / "index.json").write_text(json.dumps(manifest))
    assert answers(vector_dir, index_dir, histogram_collection.urns[:3]) == clean
    assert verify(vector_dir, index_dir) == 0


@pytest.mark.parametrize("value", [np.nan, np.inf, 3e38])
def test_an_unusable_row_of_a_store_from_before_is_never_a_500(tmp_path, value):
    """A store written before such rows were refused may hold one: it is never a neighbour, its vector
    shows null where JSON has no number, and `verify` counts it."""
    import webtest

    from app import make_app

    store_dir = make_store(tmp_path / "vectors", n=120)
    manifest = json.loads((store_dir / MANIFEST).read_text())
    del manifest["checksums_bytes"]  # as written before checksums existed
    (store_dir / MANIFEST).write_text(json.dumps(manifest))
    (store_dir / CHECKSUMS).unlink()
    vectors = np.memmap(store_dir / "vectors.f32", dtype="<f4", mode="r+", shape=(120, 16))
    vectors[7, 3] = value
    vectors.flush()
    del vectors
    build_indices(VectorStore(store_dir), tmp_path / "indices", IndexConfig(), verbose=False)
    client = webtest.TestApp(make_app(Collection(store_dir, tmp_path / "indices")))
    bad = VectorStore(store_dir).urns[7]
    for urn in VectorStore(store_dir).urns[:12]:
        answer = client.get("/api/neighbours", params={"urn": urn, "step": "all,10,1", "nns": "100",
                                                       "vectors": "true"}).json
        if urn == bad:  # asked for itself: answered, its vector as JSON can hold it
            assert answer["vector"][3] == (float(np.float32(value)) if np.isfinite(value) else None)
            continue
        found = [neighbour["urn"] for period in answer["steps"]["all"] for neighbour in period["neighbours"]]
        assert bad not in found
    assert verify(store_dir, tmp_path / "indices") == 1
