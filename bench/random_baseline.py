"""Would the similarity tests pass with random weights? The tests' emoji pairs, real model vs random init.

    python bench/random_baseline.py [--seeds 3]

The tests take 24 emoji drawn by both Google and Twitter (tests/conftest.py `emoji_pairs`) and assert
that the real Inception v3 (2015) finds the other maker's drawing: first among the 24 other-maker images
in at least 60 % of pairs (test_extract_vectors), and among its 4 nearest of all 47 other images in at
least 75 % (test_query_upload). This prints both figures for the real weights and for the same
architecture with random weights (Keras' default initialisation, a few seeds), so the thresholds can be
seen to separate them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "demo"))
sys.path.insert(0, str(ROOT / "tests"))

import fetch_emoji  # noqa: E402

from siamese.backbones import get_backbone  # noqa: E402
from siamese.images import load_model_input  # noqa: E402


def test_pairs(metadata: Path) -> list[tuple[dict, dict]]:
    """The same selection as tests/conftest.py's emoji_pairs fixture."""
    import csv

    from conftest import select_pairs

    with open(metadata, newline="", encoding="utf-8") as handle:
        return select_pairs(list(csv.DictReader(handle)))


def scores(vectors: np.ndarray) -> tuple[float, float]:
    """(recall@1 among the other maker's images, twin among the 4 nearest of all other images)."""
    google, twitter = vectors[0::2], vectors[1::2]
    across = np.linalg.norm(google[:, None] - twitter[None], axis=2)
    recall_at_1 = float(np.mean(across.argmin(axis=1) == np.arange(len(google))))
    everything = np.linalg.norm(vectors[:, None] - vectors[None], axis=2)
    np.fill_diagonal(everything, np.inf)
    twins = np.arange(len(vectors)) ^ 1  # 0<->1, 2<->3, ...
    nearest_4 = np.argsort(everything, axis=1)[:, :4]
    in_top_4 = float(np.mean([twins[i] in nearest_4[i] for i in range(1, len(vectors), 2)]))
    return recall_at_1, in_top_4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="random initialisations to try")
    args = parser.parse_args()
    metadata = fetch_emoji.fetch(ROOT / "data" / "demo")
    pairs = test_pairs(metadata)
    pixels = np.stack([load_model_input(metadata.parent / row["path"], (299, 299))
                       for pair in pairs for row in pair])

    import keras

    from siamese import inception2015

    rows = [("inception-v3-2015 (real weights)", scores(get_backbone("inception-v3-2015").load()(pixels)))]
    for seed in range(args.seeds):
        keras.utils.set_random_seed(seed)
        model = inception2015.build_keras_inception_v3_2015(None)
        vectors = np.asarray(model.predict_on_batch(inception2015.preprocess_2015(pixels)))
        rows.append((f"same network, random weights, seed {seed}", scores(vectors)))
    print(f"{len(pairs)} Google/Twitter pairs (the tests' emoji_pairs)")
    print(f"{'model':<40}{'recall@1 (test: >= 0.60)':>26}{'twin in top 4 (test: >= 0.75)':>32}")
    for name, (recall_at_1, in_top_4) in rows:
        print(f"{name:<40}{recall_at_1:>26.2f}{in_top_4:>32.2f}")


if __name__ == "__main__":
    main()
