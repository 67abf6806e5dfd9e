"""The descriptor space the indices search: the stored vectors, transformed per collection (pure numpy).

A CNN's pooled activations are a poor metric space as they come: a few bursty channels (the ones that
fire on every drawing's white paper or every photo's sky) dominate the euclidean distance, and the
directions in which images of one collection differ most (paper tone, ink, style) are the same ones in
which a re-scan differs from its original. The classic retrieval remedy (Jégou & Chum 2012, "Negative
evidences and co-occurrences in image retrieval"; Radenović et al. 2018, "Fine-tuning CNN image
retrieval with no human annotation", the learnt whitening) is fitted on the collection itself, without
labels:

    x -> sign(x) |x|^power -> L2 -> (x - mean) @ components / sqrt(eigenvalue + shrinkage) -> L2

the power (signed square root) tames bursty channels; PCA-whitening keeps the `dimensions` leading
directions and gives each the same weight, so that the many small, consistent differences between two
drawings count as much as a change of paper tone; the shrinkage (the mean eigenvalue kept) stops the
smallest directions, mostly noise, from being blown up. The result has unit length, so the euclidean
distance of two descriptors is sqrt(2 - 2 cos) and lies in [0, 2].

The stored vectors never change (the original Siamese's 2048-d Inception data and `vectors=true`
depend on them): the transform lives in the index directory (siamese/index_dir.py) with the
descriptors of every stored row, and every query, be it a urn, a vector or an upload, goes through the
same `apply`. docs/quality.md measures what each setting does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from siamese.projection import unit
from siamese.vector_store import unusable_rows

DESCRIPTORS = ("raw", "whitened")
"""raw: the stored vectors as they are (what the indices searched before issue 10);
whitened: the transform above."""
DEFAULT_DESCRIPTOR = "whitened"
DEFAULT_DESCRIPTOR_DIMENSIONS = 256
POWER = 0.5
SHRINKAGE = 1.0  # times the mean kept eigenvalue, added to every eigenvalue before dividing by its root
FIT_SAMPLE = 50_000  # rows the whitening is fitted on: 2048-d covariances need many times their dimension


def check_descriptor(descriptor: str) -> str:
    if descriptor not in DESCRIPTORS:
        raise ValueError(f"descriptor must be one of {', '.join(map(repr, DESCRIPTORS))}, got {descriptor!r}")
    return descriptor


def _power(vectors: np.ndarray, power: float) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if power == 1:
        return vectors
    if power == 0.5:
        return np.copysign(np.sqrt(np.abs(vectors)), vectors)
    return np.copysign(np.abs(vectors) ** np.float32(power), vectors)


@dataclass(frozen=True, eq=False)
class DescriptorTransform:
    """One fitted transform; `mean` and `components` None for the identity ('raw').

    components: (n_dimensions, dimensions) float32, each column already divided by the square root of
    its shrunk eigenvalue, so that `apply` is one matrix product between two normalisations.
    """

    kind: str
    power: float = 1.0
    mean: np.ndarray | None = None
    components: np.ndarray | None = None

    @property
    def is_identity(self) -> bool:
        return self.components is None

    def dimensions(self, n_dimensions: int) -> int:
        """The dimensionality of the descriptors of `n_dimensions`-d stored vectors."""
        return n_dimensions if self.components is None else self.components.shape[1]

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Descriptors of stored vectors: (n, n_dimensions) -> (n, dimensions) float32, or of one vector."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.components is None:
            return vectors
        single = vectors.ndim == 1
        prepared = unit(_power(np.atleast_2d(vectors), self.power)) - self.mean
        descriptors = unit(prepared @ self.components).astype(np.float32, copy=False)
        descriptors[unusable_rows(np.atleast_2d(vectors))] = np.nan  # never anyone's neighbour
        return descriptors[0] if single else descriptors

    @property
    def sha1(self) -> str:
        """What identifies the transform: its kind, power and every coefficient."""
        if self.components is None:
            return self.kind
        digest = hashlib.sha1(f"{self.kind}:{self.power}:".encode())
        digest.update(np.ascontiguousarray(self.mean, "<f4").tobytes())
        digest.update(np.ascontiguousarray(self.components, "<f4").tobytes())
        return digest.hexdigest()

    def to_array(self) -> np.ndarray:
        """What the index directory saves: row 0 the mean, rows 1.. the components (transposed)."""
        return np.vstack([self.mean[None, :], self.components.T]).astype(np.float32)

    @classmethod
    def from_array(cls, kind: str, power: float, saved: np.ndarray) -> DescriptorTransform:
        if saved.ndim != 2 or saved.shape[0] < 2 or not np.isfinite(saved).all():
            raise ValueError(f"not a saved transform: an array of shape {saved.shape}")
        return cls(kind, power, np.ascontiguousarray(saved[0], np.float32),
                   np.ascontiguousarray(saved[1:].T, np.float32))


IDENTITY = DescriptorTransform("raw")


def fit_descriptor_transform(vectors: np.ndarray, descriptor: str, dimensions: int,
                             sample: int = FIT_SAMPLE) -> tuple[DescriptorTransform, dict]:
    """Fit `descriptor` on (a seeded sample of) the rows: (transform, what the manifest records of it).

    The whitening keeps at most min(dimensions, n_dimensions, rows fitted on - 1) directions: a
    covariance of fewer rows than dimensions has no more non-zero eigenvalues than that.
    """
    check_descriptor(descriptor)
    if descriptor == "raw":
        return IDENTITY, {"descriptor": "raw"}
    count, n_dimensions = vectors.shape
    rows = np.sort(np.random.default_rng(0).choice(count, min(count, sample), replace=False))
    chosen = np.asarray(vectors[rows], dtype=np.float32)
    usable = ~unusable_rows(chosen)  # a NaN row of a store from before would make every descriptor NaN
    rows, chosen = rows[usable], chosen[usable]
    if not len(rows):
        raise ValueError("no usable rows to fit the descriptor transform on")
    prepared = unit(_power(chosen, POWER)).astype(np.float64)
    mean = prepared.mean(axis=0)
    centred = prepared - mean
    covariance = centred.T @ centred / max(len(rows) - 1, 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    eigenvalues, eigenvectors = np.maximum(eigenvalues[::-1], 0), eigenvectors[:, ::-1]
    k = max(1, min(dimensions, n_dimensions, len(rows) - 1))
    shrinkage = SHRINKAGE * float(eigenvalues[:k].mean())
    scale = 1 / np.sqrt(eigenvalues[:k] + shrinkage) if shrinkage > 0 else np.ones(k)
    components = eigenvectors[:, :k] * scale
    transform = DescriptorTransform(descriptor, POWER, mean.astype(np.float32),
                                    np.ascontiguousarray(components, np.float32))
    total = float(eigenvalues.sum())
    record = {"descriptor": descriptor, "dimensions": k, "power": POWER, "shrinkage": SHRINKAGE,
              "fitted_on": len(rows),
              "variance_kept": round(float(eigenvalues[:k].sum()) / total, 4) if total > 0 else 1.0}
    return transform, record
