"""The colour-histogram baseline backbone: 8x8x8 RGB histogram, 512-d, chosen with --model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from annoy_indexer import AnnoyIndexer
from extract_vectors import extract_vectors, main
from siamese.backbones import BACKBONES, BackboneError, colour_histogram, get_backbone
from siamese.images import load_model_input
from siamese.vector_store import VectorStore


def test_registered_with_its_dimension_and_no_weights():
    backbone = get_backbone("colour-histogram")
    assert backbone.n_dimensions == 512 and "colour-histogram" in BACKBONES
    embed = backbone.load()
    batch = np.zeros((2, *backbone.input_size, 3), np.uint8)
    assert embed(batch).shape == (2, 512) and embed(batch).dtype == np.float32
    with pytest.raises(BackboneError, match="no weights"):
        backbone.load("weights.h5")


def test_cells_are_shares_of_pixels():
    batch = np.zeros((2, 4, 4, 3), np.uint8)
    batch[0, ...] = (255, 0, 0)  # all red
    batch[1, :2] = (0, 0, 255)  # half blue, half black
    batch[1, 2:] = (31, 32, 200)  # r 0, g 1, b 6 (top 3 bits)
    histograms = colour_histogram(batch)
    assert histograms.shape == (2, 512)
    np.testing.assert_allclose(histograms.sum(axis=1), 1.0)
    assert histograms[0, 7 * 64] == 1.0
    assert histograms[1, 7] == 0.5 and histograms[1, 0 * 64 + 1 * 8 + 6] == 0.5
    assert np.count_nonzero(histograms) == 3


@pytest.mark.parametrize("batch", [np.zeros((4, 4, 3), np.uint8), np.zeros((1, 4, 4, 4), np.uint8),
                                   np.zeros((1, 4, 4, 3), np.float32)])
def test_refuses_what_is_not_a_uint8_rgb_batch(batch):
    with pytest.raises(ValueError, match="uint8 batch"):
        colour_histogram(batch)


def test_knows_colour_not_shape(emoji_pairs, emoji_metadata, tmp_path):
    """The honest limit of the baseline: a mirrored image is identical to it, a recoloured one far."""
    path = emoji_metadata.parent / emoji_pairs[0][0]["path"]
    size = get_backbone("colour-histogram").input_size
    original = load_model_input(path, size)
    mirrored = np.asarray(ImageOps.mirror(Image.fromarray(original)))
    recoloured = original[..., ::-1].copy()  # RGB -> BGR
    vectors = colour_histogram(np.stack([original, mirrored, recoloured]))
    assert np.linalg.norm(vectors[0] - vectors[1]) < 1e-6
    assert np.linalg.norm(vectors[0] - vectors[2]) > 0.05


def test_extract_with_model_records_it_and_the_indexer_reads_it(pairs_csv, tmp_path, capsys):
    vector_dir = tmp_path / "vectors"
    assert main([str(pairs_csv), str(vector_dir), "--model", "colour-histogram", "--quiet"]) == 0
    store = VectorStore(vector_dir)
    assert store.model == "colour-histogram" and store.n_dimensions == 512 and store.count == 48
    np.testing.assert_allclose(np.asarray(store.vectors).sum(axis=1), 1.0, rtol=1e-5)
    # the same store cannot be extended with another model's vectors
    with pytest.raises(ValueError, match="cannot be compared"):
        extract_vectors(pairs_csv, vector_dir, model="inception-v3-2015", progress=False)
    indexer = AnnoyIndexer(vector_dir, tmp_path / "indices", step_sizes=[10], verbose=False)
    assert indexer.model == "colour-histogram"
    urn = store.urns[0]
    neighbours = indexer.query(urn, n=3)
    assert len(neighbours) == 3 and urn not in [n["urn"] for n in neighbours]
