"""Small synthetic vector stores for the fast tests of the index, search and HTTP layers (no model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from siamese.vector_store import VectorStoreWriter

GAP_YEARS = (1952, 1953)  # no items: empty step-1 periods inside the timeline
LONELY_YEAR = 1958  # one item: its own step-1 period has no neighbours for it


def synthetic(n: int, dim: int, seed: int = 0, first_year: int = 1948, last_year: int = 1961,
              start: int = 0) -> tuple[np.ndarray, list[dict]]:
    """Clustered vectors with a decaying variance spectrum (like image features), years spread out."""
    rng = np.random.default_rng(seed)
    scale = np.arange(1, dim + 1) ** -0.5
    centres = rng.standard_normal((max(2, n // 40), dim)) * scale * 3
    vectors = centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, dim)) * scale
    years = [year for year in range(first_year, last_year + 1) if year not in GAP_YEARS + (LONELY_YEAR,)]
    chosen = rng.choice(years, n)
    if start == 0 and first_year <= LONELY_YEAR <= last_year:
        chosen[n // 2] = LONELY_YEAR
    items = [{"urn": f"urn:test:{start + i}", "date": f"{year}-05-01", "year": int(year),
              "path": f"images/{start + i}.jpg",
              "metadata": {"title": f"image {start + i}", "paper": "Le Temps"}}
             for i, year in enumerate(chosen)]
    return vectors.astype(np.float32), items


def make_store(directory: Path, n: int = 400, dim: int = 16, seed: int = 0, **kwargs) -> Path:
    vectors, items = synthetic(n, dim, seed, **kwargs)
    with VectorStoreWriter(directory, "test-model", dim) as writer:
        writer.append(vectors, items)
    return directory
