"""The measuring parts of bench/quality.py, on small inputs whose answers are known."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import quality  # noqa: E402


def test_rank_figures():
    order = np.array([[5, 1, 2], [3, 4, 6], [7, 8, 9]])
    figures = quality.rank_figures(order, np.array([5, 6, 1]))  # ranks 1, 3, absent
    assert figures == {"r1": pytest.approx(1 / 3), "r10": pytest.approx(2 / 3),
                       "mrr": pytest.approx((1 + 1 / 3 + 0) / 3)}


def test_exact_orders_match_brute_force():
    vectors = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    queries = np.array([0, 7, 59])
    distances = np.linalg.norm(vectors[queries, None] - vectors[None], axis=-1)
    distances[np.arange(3), queries] = np.inf
    expected = np.argsort(distances, axis=1)[:, :5]
    np.testing.assert_array_equal(quality.exact_order(vectors, queries, 5), expected)
    candidates = np.arange(30, 60)
    expected = candidates[np.argsort(np.linalg.norm(vectors[queries, None] - vectors[None, 30:], axis=-1),
                                     axis=1)[:, :4]]
    np.testing.assert_array_equal(quality.exact_order_among(vectors, queries, candidates, 4), expected)


def test_twin_pairs_match_makers_by_code_point():
    urns = ["emoji:google:1f600", "emoji:twitter:1f601", "emoji:twitter:1f600", "emoji:google:1f602"]
    google, twins, twitter = quality.twin_pairs(urns)
    assert google.tolist() == [0] and twins.tolist() == [2] and twitter.tolist() == [1, 2]


@pytest.mark.parametrize("kind", quality.PERTURBATIONS)
def test_perturbations_keep_an_rgb_image_and_change_it(kind):
    image = Image.radial_gradient("L").convert("RGB").resize((100, 80))
    copy = quality.perturb(image, kind, np.random.default_rng(1))
    assert copy.mode == "RGB"
    assert copy.size == ((80, 64) if kind == "crop80" else (100, 80))
    assert not np.array_equal(np.asarray(copy.resize(image.size)), np.asarray(image))
