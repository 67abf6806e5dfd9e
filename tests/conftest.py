"""Shared fixtures: the real emoji collection and the real model, each made once per test session."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEMO_DIR = ROOT / "data" / "demo"


@pytest.fixture(scope="session")
def emoji_metadata() -> Path:
    """The demo collection's metadata CSV (fetched with npm into data/demo, which git ignores)."""
    sys.path.insert(0, str(ROOT / "demo"))
    import fetch_emoji

    return fetch_emoji.fetch(DEMO_DIR)


@pytest.fixture(scope="session")
def emoji_rows(emoji_metadata: Path) -> list[dict]:
    with open(emoji_metadata, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def select_pairs(rows: list[dict]) -> list[tuple[dict, dict]]:
    """Google and Twitter drawings of 24 different emoji, spread over the whole list.

    Skin-tone variants are left out: they differ from their base emoji only in colour, which would
    make the twin task about colour rather than about drawing. (bench/random_baseline.py uses the same
    selection to show that random weights fail the tests' thresholds.)
    """
    by_key = {(row["maker"], row["unified"]): row for row in rows}
    bases = [row for row in rows
             if row["maker"] == "google" and "(" not in row["name"]
             and ("twitter", row["unified"]) in by_key]
    chosen = bases[:: max(1, len(bases) // 24)][:24]
    return [(row, by_key[("twitter", row["unified"])]) for row in chosen]


@pytest.fixture(scope="session")
def emoji_pairs(emoji_rows: list[dict]) -> list[tuple[dict, dict]]:
    return select_pairs(emoji_rows)


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    columns = columns or list(rows[0])
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def pairs_csv(tmp_path: Path, emoji_pairs, emoji_metadata: Path) -> Path:
    """A metadata CSV of the 24 emoji pairs, paths absolute so it can live in tmp_path."""
    rows = []
    for pair in emoji_pairs:
        for row in pair:
            rows.append(dict(row, path=str(emoji_metadata.parent / row["path"])))
    return write_csv(tmp_path / "pairs.csv", rows)


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, one per browser test module (tests/browser_support.py)."""
    from browser_support import chromium_browser

    with chromium_browser() as chromium:
        yield chromium


@pytest.fixture
def page(browser):
    """A fresh page in its own context that fails the test on a JavaScript error (a module may
    override it, e.g. with a longer timeout)."""
    from browser_support import fresh_page

    with fresh_page(browser, timeout_ms=10_000) as page:
        yield page


@pytest.fixture(scope="session")
def inception_2015():
    """The real Inception v3 (Google, 2015) embedder, loaded once: conversion is cached on disk."""
    from siamese.backbones import get_backbone

    return get_backbone("inception-v3-2015").load()


@pytest.fixture(scope="session")
def app_collection(tmp_path_factory, emoji_pairs, emoji_metadata: Path, inception_2015):
    """The web app's small real collection (49 emoji, thumbnails, indices), made once; app_support.py."""
    from app_support import build_collection

    return build_collection(tmp_path_factory.mktemp("app-collection"), emoji_pairs, emoji_metadata,
                            inception_2015)


@pytest.fixture(scope="session")
def histogram_collection(tmp_path_factory):
    """60 generated drawings, colour-histogram vectors, thumbnails, indices (steps 10, 1): the fast
    tier's real collection, made without TensorFlow in about a second; app_support.py."""
    from app_support import build_histogram_collection

    return build_histogram_collection(tmp_path_factory.mktemp("histogram-collection"))


def wait_for_stored(process: subprocess.Popen, vector_dir: Path, rows: int, seconds: float) -> int:
    """Poll the vector store a running extraction writes until it has committed at least `rows` rows,
    the process ended, or `seconds` passed; the rows committed last seen (to kill it mid-run)."""
    from siamese.vector_store import MANIFEST  # (ROOT is on sys.path once this module has run)

    deadline = time.monotonic() + seconds
    count = 0
    manifest = vector_dir / MANIFEST
    while time.monotonic() < deadline and process.poll() is None:
        if manifest.exists():
            count = json.loads(manifest.read_text())["count"]
            if count >= rows:
                break
        time.sleep(0.05)
    return count
