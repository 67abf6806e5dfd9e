"""The measuring parts of bench/scan_copies.py, on small inputs whose answers are known."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import scan_copies  # noqa: E402

pytestmark = pytest.mark.fast


def test_ranks_count_the_rows_closer_than_the_target():
    rows = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.5, 0.0]], dtype=np.float32)
    queries = np.array([[0.9, 0.0], [2.9, 0.0]], dtype=np.float32)
    # query 0: nearest rows 1 (0.1), 3 (0.4), 0 (0.9) -> row 0 ranks 3; query 1: row 2 first
    np.testing.assert_array_equal(scan_copies.ranks_of(rows, queries, np.array([0, 2])), [3, 1])
    # the query's own row never counts (original -> copy: the original itself is excluded)
    np.testing.assert_array_equal(scan_copies.ranks_of(rows, rows[[1]], np.array([3]), exclude=np.array([1])),
                                  [1])


@pytest.mark.parametrize("profile", scan_copies.PROFILES)
def test_each_profile_makes_the_copy_it_names(profile):
    image = Image.new("RGB", (200, 120), (250, 240, 230))
    image.paste((200, 30, 30), (40, 30, 120, 90))
    copy, suffix = scan_copies.copy_of(image, profile, np.random.default_rng(0))
    pixels = np.asarray(copy.convert("RGB"), dtype=np.int16)
    assert suffix == (".jpg" if profile == "quarter_jpeg20" else ".png")
    if profile.startswith("rotate"):
        assert copy.size[0] > 200 and copy.size[1] > 120  # expanded, paper-white corners
        assert (pixels[0, 0] == 255).all()
    elif profile == "crop85":
        assert copy.size == (170, 102)
    elif profile == "quarter_jpeg20":
        assert copy.size == (50, 30)
    elif profile in ("grey", "halftone"):
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
        if profile == "halftone":
            assert set(np.unique(pixels)) <= {0, 255}
    elif profile == "sepia":
        assert (pixels[..., 0] >= pixels[..., 2]).all()  # brown ink on cream paper
    else:  # gamma and contrast: darker mid-tones, same size
        assert copy.size == image.size and pixels.mean() < np.asarray(image, dtype=np.int16).mean()
