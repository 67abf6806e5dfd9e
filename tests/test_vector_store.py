from __future__ import annotations

import json

import numpy as np
import pytest

from siamese.vector_store import ITEMS, MANIFEST, VECTORS, StoreError, VectorStore, VectorStoreWriter

pytestmark = pytest.mark.fast  # no model, no browser: make test-fast


def items(start: int, count: int) -> list[dict]:
    return [{"urn": f"urn:test:{i}", "date": "1950", "year": 1950, "path": f"{i}.png",
             "metadata": {"title": f"item {i}"}} for i in range(start, start + count)]


def vectors(start: int, count: int, dim: int = 8) -> np.ndarray:
    return np.arange(start * dim, (start + count) * dim, dtype=np.float32).reshape(count, dim)


def test_appended_batches_are_read_back_memory_mapped(tmp_path):
    with VectorStoreWriter(tmp_path, "test-model", 8) as writer:
        writer.append(vectors(0, 3), items(0, 3))
        writer.append(vectors(3, 2), items(3, 2))
    store = VectorStore(tmp_path)
    assert (store.model, store.n_dimensions, len(store)) == ("test-model", 8, 5)
    assert isinstance(store.vectors, np.memmap)
    np.testing.assert_array_equal(store.vectors, vectors(0, 5))
    assert store.urns == [f"urn:test:{i}" for i in range(5)]
    assert store.row_of("urn:test:3") == 3
    assert store.items[4]["metadata"] == {"title": "item 4"}
    assert store.years().tolist() == [1950] * 5
    with pytest.raises(ValueError):
        store.vectors[0, 0] = 1.0  # read-only


def test_unknown_urn_is_a_key_error_naming_it(tmp_path):
    with VectorStoreWriter(tmp_path, "m", 8) as writer:
        writer.append(vectors(0, 1), items(0, 1))
    with pytest.raises(KeyError, match="urn:nope"):
        VectorStore(tmp_path).row_of("urn:nope")


def test_a_killed_writer_leaves_only_an_invisible_tail_that_the_next_writer_cuts(tmp_path):
    with VectorStoreWriter(tmp_path, "m", 8) as writer:
        writer.append(vectors(0, 2), items(0, 2))
    # What a kill -9 between the data writes and the manifest commit leaves behind:
    with open(tmp_path / VECTORS, "ab") as handle:
        handle.write(vectors(2, 1).tobytes()[:13])
    with open(tmp_path / ITEMS, "ab") as handle:
        handle.write(b'{"urn": "urn:test:2", "da')
    store = VectorStore(tmp_path)
    assert len(store) == 2 and store.urns == ["urn:test:0", "urn:test:1"]
    with VectorStoreWriter(tmp_path, "m", 8) as writer:
        writer.append(vectors(2, 1), items(2, 1))
    store = VectorStore(tmp_path)
    np.testing.assert_array_equal(store.vectors, vectors(0, 3))
    assert store.urns[-1] == "urn:test:2"


def test_another_model_cannot_be_appended(tmp_path):
    VectorStoreWriter(tmp_path, "model-a", 8).close()
    with pytest.raises(StoreError, match="model-a"):
        VectorStoreWriter(tmp_path, "model-b", 8)
    with pytest.raises(StoreError, match="8-d"):
        VectorStoreWriter(tmp_path, "model-a", 16)


def test_one_writer_at_a_time(tmp_path):
    with VectorStoreWriter(tmp_path, "m", 8), pytest.raises(StoreError, match="another process"):
        VectorStoreWriter(tmp_path, "m", 8)


def test_bad_batches_are_refused_and_nothing_is_stored(tmp_path):
    with VectorStoreWriter(tmp_path, "m", 8) as writer:
        writer.append(vectors(0, 1), items(0, 1))
        with pytest.raises(ValueError, match="shape"):
            writer.append(vectors(1, 2), items(1, 1))
        bad = vectors(1, 1)
        bad[0, 3] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            writer.append(bad, items(1, 1))
        with pytest.raises(ValueError, match="unique"):
            writer.append(vectors(1, 1), items(0, 1))
    store = VectorStore(tmp_path)
    assert len(store) == 1
    assert (tmp_path / VECTORS).stat().st_size == 8 * 4


def test_not_a_store_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="not a vector store"):
        VectorStore(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(StoreError, match="not a"):
        VectorStore(tmp_path)
    (tmp_path / MANIFEST).write_text("{broken")
    with pytest.raises(StoreError, match="unreadable"):
        VectorStore(tmp_path)


def test_items_behave_as_a_read_only_list_parsed_on_demand(tmp_path):
    with VectorStoreWriter(tmp_path, "m", 8) as writer:
        writer.append(vectors(0, 4), items(0, 4))
    store = VectorStore(tmp_path)
    assert len(store.items) == 4
    assert store.items[-1]["urn"] == "urn:test:3"
    assert [item["urn"] for item in store.items[1:3]] == ["urn:test:1", "urn:test:2"]
    with pytest.raises(IndexError):
        store.items[4]
    assert "urn:test:2" in store and "urn:none" not in store and ["unhashable"] not in store
