"""Dev check: does the torch-free Keras conversion of the 2015 Inception v3 match TorchScript?

Why: the conversion maps 94 conv units by order and swaps one pooling layer; a mistake there
still yields plausible 2048-d vectors, so only a comparison with the original TorchScript proves
it right. torch must not enter the project venv, so the script runs in two processes:

    # compare mode (project venv); runs the torch part itself through --torch-python
    .venv/bin/python bench/check_inception2015_against_torch.py --torch-python /tmp/torchvenv/bin/python

    # torch mode (any venv with torch + numpy; started by compare mode)
    python bench/check_inception2015_against_torch.py --torch-out F.npy --images I.npy --model default_1.pt

Prints max abs diff, cosines, conversion time and ms/image for both frameworks.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
EMOJI_DIR = REPO / "data" / "demo" / "images" / "google"  # demo/fetch_emoji.py puts them here
PHOTO_GLOBS = ["/root/.rustup/toolchains/*/share/doc/rust/html/embedded-book/assets/*.jp*g"]
SIZE = 299


# --------------------------------------------------------------------------- torch mode


def run_torch(images_npy: str, model_path: str, out_npy: str) -> None:
    """Features of the original TorchScript (NCHW input, same ``x / 128 - 1`` scaling)."""
    import torch

    model = torch.jit.load(model_path, map_location="cpu").eval()
    images = np.load(images_npy)
    x = torch.from_numpy(images.astype(np.float32) / 128.0 - 1.0).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        model(x[:1])  # warm-up
        feats = model(x).numpy()
        start = time.perf_counter()
        model(x)
        batch_s = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(min(5, len(x))):
            model(x[i : i + 1])
        single_s = (time.perf_counter() - start) / min(5, len(x))
    np.save(out_npy, feats.reshape(len(x), -1))
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                      "batch_ms_per_image": 1000 * batch_s / len(x), "batch1_ms": 1000 * single_s}))


# --------------------------------------------------------------------------- test images


def make_images(n_emoji: int = 12, n_synthetic: int = 8, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Real pictures (emoji artwork, a couple of photos if present) plus natural-ish synthetic ones."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    images, names = [], []

    def add(img: Image.Image, name: str) -> None:
        images.append(np.asarray(img.convert("RGB").resize((SIZE, SIZE), Image.BICUBIC)))
        names.append(name)

    emoji = sorted(EMOJI_DIR.glob("*.png"))
    if not emoji:
        print(f"note: no emoji under {EMOJI_DIR} (run demo/fetch_emoji.py data/demo first)",
              file=sys.stderr)
    for path in emoji[:: max(1, len(emoji) // n_emoji)][:n_emoji]:
        rgba = Image.open(path).convert("RGBA")
        background = Image.new("RGBA", rgba.size, tuple(int(c) for c in rng.integers(0, 256, 3)) + (255,))
        add(Image.alpha_composite(background, rgba), f"emoji:{path.name}")
    for pattern in PHOTO_GLOBS:
        for path in sorted(pathlib.Path("/").glob(pattern.lstrip("/")))[:2]:
            add(Image.open(path), f"photo:{path.name}")

    for i in range(n_synthetic):
        # low-frequency colour field (sky/ground-like) + shapes + blur + sensor-like noise
        field = rng.normal(size=(6, 6, 3)) * 60 + rng.uniform(60, 200, 3)
        img = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8)).resize((SIZE, SIZE), Image.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 9))):
            x0, y0 = rng.integers(0, SIZE - 40, 2)
            w, h = rng.integers(20, 160, 2)
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x0 + w, y0 + h), fill=fill)
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 3))))
        noisy = np.asarray(img, np.float32) + rng.normal(0, 6, (SIZE, SIZE, 3))
        images.append(np.clip(noisy, 0, 255).astype(np.uint8))
        names.append(f"synthetic:{i}")
    for value in (0, 255):  # the two ends of the input range
        images.append(np.full((SIZE, SIZE, 3), value, np.uint8))
        names.append(f"flat:{value}")
    return np.stack(images), names


# --------------------------------------------------------------------------- compare mode


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(torch_python: str) -> int:
    sys.path.insert(0, str(REPO))
    from siamese import inception2015 as inc

    images, names = make_images()
    model_path = inc.find_torchscript_file()
    with tempfile.TemporaryDirectory() as tmp:
        images_npy, torch_npy = f"{tmp}/images.npy", f"{tmp}/torch.npy"
        np.save(images_npy, images)
        command = [torch_python, __file__, "--torch-out", torch_npy, "--images", images_npy,
                   "--model", str(model_path)]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        torch_stats = json.loads(done.stdout.strip().splitlines()[-1])
        expected = np.load(torch_npy)

        import keras
        import tensorflow as tf

        start = time.perf_counter()
        tensors = inc.read_torchscript_tensors(model_path)
        read_s = time.perf_counter() - start
        model = inc.build_keras_inception_v3_2015(tensors)
        convert_s = time.perf_counter() - start

        start = time.perf_counter()
        loaded_model = inc.load_inception_v3_2015()  # what the project calls: find, read, convert
        load_s = time.perf_counter() - start

        x = inc.preprocess_2015(images)
        got = model.predict(x, batch_size=32, verbose=0)  # also the warm-up (graph tracing)
        batch_s = min(_seconds(lambda: model.predict(x, batch_size=32, verbose=0)) for _ in range(2))
        batch_ms = 1000 * batch_s / len(x)
        model.predict_on_batch(x[:1])
        single_ms = 1000 * _seconds(lambda: [model.predict_on_batch(x[i : i + 1]) for i in range(8)]) / 8
        from_loader = loaded_model.predict(x, batch_size=32, verbose=0)

        # The quirk matters: the same weights in plain Keras InceptionV3 (avg pool in mixed10).
        plain = keras.applications.InceptionV3(weights=None, include_top=False, pooling="avg",
                                               input_shape=(inc.INPUT_SIZE, inc.INPUT_SIZE, 3))
        plain.set_weights(model.get_weights())
        unswapped = plain.predict(x, batch_size=32, verbose=0)

    def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    diff = np.abs(got - expected)
    cos = cosines(got, expected)
    convs = [x for x in model.layers if isinstance(x, keras.layers.Conv2D)]
    depth_order = [x.name for x in convs]
    created = [x.name for x in sorted(convs, key=inc.creation_index)]
    print(f"images: {len(images)} ({sum(n.startswith('emoji') for n in names)} emoji, "
          f"{sum(n.startswith('photo') for n in names)} photos, "
          f"{sum(n.startswith(('synthetic', 'flat')) for n in names)} synthetic/flat)")
    print(f"versions: tensorflow {tf.__version__}, keras {keras.__version__}, torch {torch_stats['torch']}")
    print(f"max |keras - torch| = {diff.max():.3g}  (max |torch| = {np.abs(expected).max():.3g}, "
          f"mean |torch| = {np.abs(expected).mean():.3g})")
    print(f"cosine keras vs torch: min {cos.min():.7f}, mean {cos.mean():.7f}")
    for kind in ("emoji", "photo", "synthetic", "flat"):
        rows = [i for i, n in enumerate(names) if n.startswith(kind)]
        if rows:
            print(f"  {kind:9s} n={len(rows):2d} max diff {diff[rows].max():.3g}  "
                  f"min cosine {cos[rows].min():.7f}")
    print(f"load_inception_v3_2015() gives the same vectors: {np.array_equal(got, from_loader)}")
    print(f"without the mixed10 max-pool swap: cosine min {cosines(unswapped, expected).min():.4f}, "
          f"mean {cosines(unswapped, expected).mean():.4f}")
    print(f"conv layers whose model.layers position differs from creation order: "
          f"{sum(a != b for a, b in zip(depth_order, created, strict=True))} of {len(created)}")
    print(f"conversion: read {read_s:.2f} s, read+build {convert_s:.2f} s; "
          f"load_inception_v3_2015 {load_s:.2f} s")
    print(f"keras: {batch_ms:.1f} ms/image at batch 32, {single_ms:.1f} ms at batch 1 "
          f"({tf.config.threading.get_intra_op_parallelism_threads() or 'default'} intra-op threads)")
    print(f"torch: {torch_stats['batch_ms_per_image']:.1f} ms/image at batch {len(images)}, "
          f"{torch_stats['batch1_ms']:.1f} ms at batch 1 ({torch_stats['threads']} threads)")
    ok = diff.max() < 1e-4 and cos.min() > 0.99999
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch-python", default="/tmp/torchvenv/bin/python",
                        help="python of a venv with torch (compare mode)")
    parser.add_argument("--torch-out", help="torch mode: write TorchScript features to this .npy")
    parser.add_argument("--images", help="torch mode: uint8 (n, 299, 299, 3) .npy")
    parser.add_argument("--model", help="torch mode: path of default_1.pt")
    args = parser.parse_args()
    if args.torch_out:
        run_torch(args.images, args.model, args.torch_out)
        return 0
    return compare(args.torch_python)


if __name__ == "__main__":
    sys.exit(main())
