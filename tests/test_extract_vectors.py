"""Extraction with the real Inception v3 (Google's 2015 weights) on real emoji images."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, wait_for_stored, write_csv
from extract_vectors import extract_vectors
from siamese.vector_store import VectorStore


def test_same_emoji_by_two_makers_is_found_as_twin(pairs_csv, tmp_path, inception_2015):
    """Holds only for a real model: measured recall@1 0.83 here, 0.17 with random weights."""
    report = extract_vectors(pairs_csv, tmp_path / "vectors", embedder=inception_2015,
                             batch_size=16, progress=False)
    assert report.stored == 48 and report.rejects == []
    store = VectorStore(tmp_path / "vectors")
    assert (store.model, store.n_dimensions) == ("inception-v3-2015", 2048)
    makers = [item["metadata"]["maker"] for item in store.items]
    google = store.vectors[[i for i, m in enumerate(makers) if m == "google"]]
    twitter = store.vectors[[i for i, m in enumerate(makers) if m == "twitter"]]
    distances = np.linalg.norm(google[:, None, :] - twitter[None, :, :], axis=2)
    recall_at_1 = np.mean(distances.argmin(axis=1) == np.arange(len(google)))
    assert recall_at_1 >= 0.6, f"twin found first for only {recall_at_1:.0%} of 24 emoji"


def test_items_keep_date_year_and_metadata_columns(pairs_csv, tmp_path, inception_2015, emoji_pairs):
    extract_vectors(pairs_csv, tmp_path / "v", embedder=inception_2015, progress=False)
    first = VectorStore(tmp_path / "v").items[0]
    source = emoji_pairs[0][0]
    assert first["urn"] == source["urn"] and first["date"] == source["date"]
    assert first["year"] == int(source["date"])
    assert first["metadata"]["name"] == source["name"]
    assert set(first["metadata"]) == {"maker", "name", "category", "subcategory", "unified",
                                      "added_in"}


def test_interrupted_run_is_resumed_and_gives_the_same_vectors(pairs_csv, tmp_path, inception_2015):
    calls = {"n": 0}

    def crashing_after_two_batches(batch):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("simulated crash")
        return inception_2015(batch)

    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_vectors(pairs_csv, tmp_path / "v", embedder=crashing_after_two_batches,
                        batch_size=8, progress=False)
    assert len(VectorStore(tmp_path / "v")) == 16  # two committed batches survive
    resumed = extract_vectors(pairs_csv, tmp_path / "v", embedder=inception_2015, batch_size=8,
                              progress=False)
    assert (resumed.already_stored, resumed.stored, resumed.total_in_store) == (16, 32, 48)
    extract_vectors(pairs_csv, tmp_path / "fresh", embedder=inception_2015, batch_size=48,
                    progress=False)
    resumed_store, fresh_store = VectorStore(tmp_path / "v"), VectorStore(tmp_path / "fresh")
    assert resumed_store.urns == fresh_store.urns
    np.testing.assert_allclose(resumed_store.vectors, fresh_store.vectors, atol=2e-4)
    again = extract_vectors(pairs_csv, tmp_path / "v", embedder=inception_2015, progress=False)
    assert again.stored == 0 and again.total_in_store == 48


def test_kill_9_mid_run_leaves_a_consistent_store_that_resumes(pairs_csv, tmp_path, inception_2015):
    vector_dir = tmp_path / "v"
    command = [sys.executable, str(ROOT / "extract_vectors.py"), str(pairs_csv), str(vector_dir),
               "--batch-size", "4", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    count = wait_for_stored(process, vector_dir, 8, 120)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert count >= 8, process.stderr.read().decode()[-2000:]
    killed = VectorStore(vector_dir)
    assert len(killed) < 48, "the run finished before it could be killed"
    assert len(killed.items) == len(killed) and np.isfinite(killed.vectors).all()
    report = extract_vectors(pairs_csv, vector_dir, embedder=inception_2015, progress=False)
    assert report.already_stored == len(killed) and report.total_in_store == 48
    store = VectorStore(vector_dir)
    assert sorted(store.urns) == sorted(set(store.urns)) and len(store) == 48
    assert os.path.getsize(vector_dir / "vectors.f32") == 48 * 2048 * 4


def test_unreadable_images_are_rejected_with_reasons_and_the_run_goes_on(tmp_path, emoji_pairs,
                                                                         emoji_metadata, inception_2015):
    good = [dict(row, path=str(emoji_metadata.parent / row["path"])) for row in emoji_pairs[0]]
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "whole.png")
    whole = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "text.png").write_text("not an image")
    bad = [{"urn": "bad:truncated", "path": "truncated.png", "date": "1950"},
           {"urn": "bad:text", "path": "text.png", "date": "1950"},
           {"urn": "bad:missing", "path": "missing.png", "date": "1950"},
           {"urn": "bad:date", "path": "whole.png", "date": "1950-14"}]
    rows = [good[0], *bad, good[1]]
    meta = write_csv(tmp_path / "meta.csv", rows, ["urn", "path", "date", "name"])
    report = extract_vectors(meta, tmp_path / "v", embedder=inception_2015, progress=False)
    assert report.stored == 2
    with open(tmp_path / "v" / "rejects.csv", newline="") as handle:
        reasons = {row["urn"]: row["reason"] for row in csv.DictReader(handle)}
    assert set(reasons) == {"bad:truncated", "bad:text", "bad:missing", "bad:date"}
    assert "truncated" in reasons["bad:truncated"]
    assert "not an image" in reasons["bad:text"]
    assert "missing file" in reasons["bad:missing"]
    assert "CSV line 6" in reasons["bad:date"]
    assert VectorStore(tmp_path / "v").urns == [good[0]["urn"], good[1]["urn"]]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "extract_vectors.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_errors_are_one_clear_line_without_traceback(tmp_path: Path):
    result = run_cli(str(tmp_path / "nope.csv"), str(tmp_path / "v"))
    assert result.returncode == 2 and "not found" in result.stderr
    (tmp_path / "cols.csv").write_text("urn,file\na,b.png\n")
    result = run_cli(str(tmp_path / "cols.csv"), str(tmp_path / "v"))
    assert result.returncode == 2 and "missing column" in result.stderr
    result = run_cli(str(tmp_path / "cols.csv"), str(tmp_path / "v"), "--model", "vgg99")
    assert result.returncode == 2 and "invalid choice" in result.stderr
    result = run_cli(str(tmp_path / "cols.csv"), str(tmp_path / "v"), "--batch-size", "0")
    assert result.returncode == 2 and "batch-size" in result.stderr
    for result in (run_cli(str(tmp_path / "nope.csv"), str(tmp_path / "v")),):
        assert "Traceback" not in result.stderr


def test_cli_refuses_to_mix_models_in_one_store(tmp_path: Path):
    from siamese.vector_store import VectorStoreWriter

    VectorStoreWriter(tmp_path / "v", "some-other-model", 1280).close()
    (tmp_path / "m.csv").write_text("urn,path,date\na,a.png,1950\n")
    result = run_cli(str(tmp_path / "m.csv"), str(tmp_path / "v"))
    assert result.returncode == 2 and "some-other-model" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_tensorflow_lines_on_the_terminal_unless_verbose(pairs_csv, tmp_path: Path):
    """TensorFlow writes its start-up lines (oneDNN, absl) whatever TF_CPP_MIN_LOG_LEVEL says: a
    --quiet run prints nothing on stderr, and only its summary; --verbose shows TensorFlow's lines."""
    lines = pairs_csv.read_text().splitlines()
    two = tmp_path / "two.csv"
    two.write_text("\n".join(lines[:3]) + "\n")
    quiet = run_cli(str(two), str(tmp_path / "quiet"), "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert quiet.stdout.startswith("stored 2 new vectors") and len(quiet.stdout.splitlines()) == 1
    verbose = run_cli(str(two), str(tmp_path / "verbose"), "--quiet", "--verbose")
    assert verbose.returncode == 0
    assert any(mark in verbose.stderr for mark in ("oneDNN", "absl", "tensorflow", "I0000")), verbose.stderr
