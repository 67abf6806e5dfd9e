"""Input modes: how images are shown to the model (colour, grey, scan), recorded in the store and applied
alike to the collection's images and to every image queried against it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from annoy_indexer import AnnoyIndexer
from extract_vectors import main
from siamese.backbones import colour_histogram, get_backbone
from siamese.collection import Collection
from siamese.images import INPUT_MODES, load_model_input, normalise_model_input
from siamese.vector_store import StoreError, VectorStore, VectorStoreWriter

pytestmark = pytest.mark.fast


def drawing(tone: tuple[int, int, int], ink: tuple[int, int, int]) -> Image.Image:
    """A black-and-white motif printed with `ink` on paper of `tone`."""
    image = Image.new("RGB", (120, 80), tone)
    image.paste(ink, (20, 10, 70, 60))
    image.paste(ink, (80, 30, 110, 40))
    return image


def test_colour_is_the_image_as_it_is_and_unknown_modes_are_refused():
    pixels = np.asarray(drawing((240, 220, 180), (90, 40, 20)))
    assert normalise_model_input(pixels, "colour") is pixels
    with pytest.raises(ValueError, match="input mode must be one of 'colour', 'grey', 'scan'"):
        normalise_model_input(pixels, "sepia")
    assert INPUT_MODES == ("colour", "grey", "scan")


def test_grey_shows_other_paper_and_ink_alike():
    """The same motif on cream paper in brown ink and on white paper in black ink: different colour
    pictures, the same grey input (levels stretched to full black and white)."""
    sepia = normalise_model_input(np.asarray(drawing((240, 225, 190), (100, 60, 30))), "grey")
    plain = normalise_model_input(np.asarray(drawing((255, 255, 255), (0, 0, 0))), "grey")
    assert (sepia[..., 0] == sepia[..., 2]).all() and sepia.min() == 0 and sepia.max() == 255
    np.testing.assert_array_equal(sepia, plain)


def test_scan_dissolves_a_halftone_screen():
    """A 1-bit dither of a mid-grey field and the field itself: far apart as grey, close as scan."""
    flat = Image.new("L", (300, 300), 255)  # white paper, a mid-grey field, a black motif
    flat.paste(128, (30, 30, 270, 270))
    flat.paste(0, (100, 100, 200, 200))
    dithered = np.asarray(flat.convert("1").convert("RGB"))
    plain = np.asarray(flat.convert("RGB"))
    grey_gap = np.abs(normalise_model_input(dithered, "grey").astype(int)
                      - normalise_model_input(plain, "grey").astype(int)).mean()
    scan_gap = np.abs(normalise_model_input(dithered, "scan").astype(int)
                      - normalise_model_input(plain, "scan").astype(int)).mean()
    assert scan_gap < grey_gap / 3
    assert normalise_model_input(plain, "scan").shape == plain.shape


def test_the_store_records_its_input_mode_and_keeps_to_it(tmp_path):
    with VectorStoreWriter(tmp_path / "v", "colour-histogram", 512, "grey"):
        pass
    assert VectorStore(tmp_path / "v").input_mode == "grey"
    with pytest.raises(StoreError, match="vectors of grey input, not colour"):
        VectorStoreWriter(tmp_path / "v", "colour-histogram", 512)
    with pytest.raises(ValueError, match="input mode must be one of"):
        VectorStoreWriter(tmp_path / "w", "colour-histogram", 512, "negative")
    # a store written before input modes existed holds colour input
    manifest = json.loads((tmp_path / "v" / "store.json").read_text())
    del manifest["input_mode"]
    (tmp_path / "v" / "store.json").write_text(json.dumps(manifest))
    assert VectorStore(tmp_path / "v").input_mode == "colour"


@pytest.mark.parametrize("mode", ["grey", "scan"])
def test_extraction_and_queries_show_images_to_the_model_alike(tmp_path, capsys, mode):
    images = tmp_path / "images"
    images.mkdir()
    rows = ["urn,path,date"]
    for index in range(12):
        rng = np.random.default_rng(index)
        drawing(tuple(rng.integers(150, 256, 3).tolist()), tuple(rng.integers(0, 120, 3).tolist())).save(
            images / f"{index}.png")
        rows.append(f"urn:d:{index},images/{index}.png,{1950 + index}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    assert main([str(tmp_path / "m.csv"), str(tmp_path / "vectors"), "--model", "colour-histogram",
                 "--input", mode, "--quiet"]) == 0
    store = VectorStore(tmp_path / "vectors")
    assert store.input_mode == mode
    size = get_backbone("colour-histogram").input_size
    expected = colour_histogram(load_model_input(images / "3.png", size, mode)[None])[0]
    np.testing.assert_allclose(store.vectors[store.row_of("urn:d:3")], expected, rtol=1e-6)
    assert (np.flatnonzero(expected) % 73 == 0).all()  # grey: only cells on the RGB cube's diagonal
    # an upload of the same file, and the notebook's embed_image, are shown the same way
    collection = Collection(tmp_path / "vectors", tmp_path / "indices",
                            config=AnnoyIndexer(tmp_path / "vectors", tmp_path / "indices")._config)
    np.testing.assert_allclose(collection.embed(Image.open(images / "3.png")), expected, rtol=1e-6)
    indexer = AnnoyIndexer(tmp_path / "vectors", tmp_path / "indices", verbose=False)
    np.testing.assert_allclose(indexer.embed_image(images / "3.png"), expected, rtol=1e-6)
    assert collection.info()["input_mode"] == mode
    capsys.readouterr()
    assert main([str(tmp_path / "m.csv"), str(tmp_path / "vectors"), "--model", "colour-histogram",
                 "--quiet"]) == 2  # another input mode into the same store: refused, nothing changed
    assert f"holds vectors of {mode} input, not colour" in capsys.readouterr().err
    assert VectorStore(tmp_path / "vectors").count == 12
