"""Extraction on Ray (siamese/ray_extract.py) against extraction in one process: the real engine (one
local cluster for the module) and the real Inception v3, loaded in the actors as extract_vectors.py
--ray loads it, on real emoji plus images that must be rejected."""

from __future__ import annotations

import csv
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, wait_for_stored, write_csv
from extract_vectors import extract_vectors
from siamese import images
from siamese.ray_extract import ActorPlan, RayExtractionError, plan_actors
from siamese.vector_store import VectorStore, VectorStoreWriter

MODEL = "inception-v3-2015"
MAX_PIXELS = 1_000_000  # the collection's one large image (1.2 megapixels) is over it
LARGE = "bad:large"


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster for the module (starting one takes seconds), shipping our siamese package
    to its workers as extract_vectors.py --ray does."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from siamese.ray_extract import job_runtime_env

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024,
             runtime_env=job_runtime_env(), logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def collection(tmp_path_factory, emoji_pairs, emoji_metadata: Path) -> Path:
    """The 48 emoji of the pairs (absolute paths), with a CSV row that is rejected, an image over
    MAX_PIXELS among the first rows (so a killed run has committed past it), a file that is not an
    image and a missing one."""
    folder = tmp_path_factory.mktemp("ray-collection")
    Image.new("RGB", (1200, 1000), (200, 180, 150)).save(folder / "large.png")
    (folder / "corrupt.png").write_text("not an image")
    emoji = [dict(row, path=str(emoji_metadata.parent / row["path"])) for pair in emoji_pairs for row in pair]
    bad = {1: {"urn": LARGE, "path": "large.png", "date": "1950"},
           9: {"urn": "bad:corrupt", "path": "corrupt.png", "date": "1950"},
           20: {"urn": "bad:missing", "path": "missing.png", "date": "1950"},
           30: {"urn": "bad:date", "path": "large.png", "date": "1950-14"}}
    rows = []
    for index, row in enumerate(emoji):
        if index in bad:
            rows.append(bad[index])
        rows.append(row)
    return write_csv(folder / "collection.csv", rows, list(emoji[0]))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, collection: Path, inception_2015) -> Path:
    """The store extract_vectors makes in this process, with the same pixel limit."""
    vector_dir = tmp_path_factory.mktemp("reference") / "v"
    saved = images.MAX_PIXELS
    images.set_max_pixels(MAX_PIXELS)
    try:
        extract_vectors(collection, vector_dir, embedder=inception_2015, batch_size=8, progress=False)
    finally:
        images.set_max_pixels(saved)
    return vector_dir


def rejects_of(vector_dir: Path) -> list[dict]:
    with open(vector_dir / "rejects.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def assert_same_store(vector_dir: Path, reference: Path) -> None:
    store, expected = VectorStore(vector_dir), VectorStore(reference)
    store.verify()
    assert store.urns == expected.urns
    assert (store.model, store.n_dimensions, store.input_mode) == (MODEL, 2048, "colour")
    difference = np.abs(np.asarray(store.vectors) - np.asarray(expected.vectors)).max()
    assert difference <= 1e-5, f"vectors differ by up to {difference}"
    assert list(store.items) == list(expected.items)
    assert rejects_of(vector_dir) == rejects_of(reference)


def test_ray_stores_and_rejects_what_one_process_does(ray_cluster, collection, reference, tmp_path):
    from siamese.ray_extract import extract_vectors_on_ray

    assert images.MAX_PIXELS != MAX_PIXELS  # the actors get the limit from the call, not from here
    report = extract_vectors_on_ray(collection, tmp_path / "v", model=MODEL, batch_size=8, n_actors=1,
                                    max_pixels=MAX_PIXELS, progress=False)
    assert_same_store(tmp_path / "v", reference)
    assert (report.stored, report.already_stored, report.total_in_store) == (48, 0, 48)
    reasons = {row["urn"]: row["reason"] for row in rejects_of(tmp_path / "v")}
    assert set(reasons) == {LARGE, "bad:corrupt", "bad:missing", "bad:date"}
    assert "too many pixels" in reasons[LARGE] and "missing file" in reasons["bad:missing"]
    assert "not an image" in reasons["bad:corrupt"] and "CSV line" in reasons["bad:date"]
    assert report.rejects == [(row["urn"], row["path"], row["reason"]) for row in rejects_of(reference)]


def descendants(root: int) -> dict[int, str]:
    """{pid: command line} of every process below `root` (Ray's GCS, raylet, agents, workers)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    commands = {}
    for pid in found:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                commands[pid] = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
    return commands


def running(pids) -> list[int]:
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.append(pid)
        except OSError:
            continue
    return alive


def wait_gone(pids, deadline: float) -> list[int]:
    while running(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return running(pids)


def test_driver_killed_mid_run_leaves_a_store_that_resumes_to_the_same_vectors(
        ray_cluster, collection, reference, tmp_path):
    """kill -9 of extract_vectors.py --ray: the store is unlocked at once, the local cluster it started
    goes with it, and the same extraction again completes the store as if nothing had happened.

    Ray's two small agents (DashboardAgent, RuntimeEnvAgent) are not waited for: they see the raylet
    die at once, but then spend 60 s trying to tell the dead GCS (a timeout fixed in Ray 2.60's
    publish_error_to_driver) before they exit; measured gone 60 s after the kill."""
    from siamese.ray_extract import extract_vectors_on_ray

    vector_dir = tmp_path / "v"
    command = [sys.executable, str(ROOT / "extract_vectors.py"), str(collection), str(vector_dir), "--ray",
               "--ray-actors", "1", "--batch-size", "4", "--max-pixels", "1M", "--quiet"]
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    count = wait_for_stored(process, vector_dir, 4, 150)
    cluster = descendants(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = time.monotonic()
    assert count >= 4, (tmp_path / "stderr.txt").read_text()[-3000:]
    killed = VectorStore(vector_dir)
    assert len(killed) < 48, "the run finished before it could be killed"
    VectorStoreWriter(vector_dir, MODEL, 2048).close()  # not left locked, not even by Ray's processes
    assert any("raylet" in command for command in cluster.values()), cluster  # its own local cluster
    assert any("ModelActor" in command for command in cluster.values()), cluster  # and the model in it

    agents = {pid for pid, command in cluster.items() if command in ("ray::DashboardAgent",
                                                                     "ray::RuntimeEnvAgent")}
    left = wait_gone(set(cluster) - agents, killed_at + 30)
    assert not left, f"still running after the driver was killed: {[cluster[pid] for pid in left]}"

    report = extract_vectors_on_ray(collection, vector_dir, model=MODEL, batch_size=8, n_actors=1,
                                    max_pixels=MAX_PIXELS, progress=False)
    assert (report.already_stored, report.total_in_store) == (len(killed), 48)
    assert report.stored == 48 - len(killed)
    assert_same_store(vector_dir, reference)
    assert os.path.getsize(vector_dir / "vectors.f32") == 48 * 2048 * 4


def test_an_actor_that_cannot_load_the_model_is_one_error_naming_why(ray_cluster, collection, tmp_path):
    from siamese.ray_extract import extract_vectors_on_ray

    (tmp_path / "weights.h5").write_text("not weights")
    with pytest.raises(RayExtractionError, match=r"BackboneError: cannot load Inception v3 \(2015\) "
                                                 r"weights from .*weights\.h5") as caught:
        extract_vectors_on_ray(collection, tmp_path / "v", model=MODEL, weights=tmp_path / "weights.h5",
                               n_actors=1, progress=False)
    assert "\n" not in str(caught.value)
    assert len(VectorStore(tmp_path / "v")) == 0


def test_more_actors_than_the_cluster_holds_is_refused_before_any_starts(ray_cluster, collection, tmp_path):
    from siamese.ray_extract import extract_vectors_on_ray

    with pytest.raises(RayExtractionError, match="room for 2 model actors"):
        extract_vectors_on_ray(collection, tmp_path / "v", model=MODEL, n_actors=3, progress=False)
    with pytest.raises(RayExtractionError, match="room for no model actor"):
        extract_vectors_on_ray(collection, tmp_path / "v", model=MODEL, cpus_per_actor=4, progress=False)


def test_actor_plans_fit_the_nodes():
    assert plan_actors([{"CPU": 2}]) == ActorPlan(1, 2, 0)
    assert plan_actors([{"CPU": 16}, {"CPU": 8}, {"CPU": 0}]) == ActorPlan(6, 4, 0)
    assert plan_actors([{"CPU": 2}], n_actors=2) == ActorPlan(2, 1, 0)
    assert plan_actors([{"CPU": 8}, {"CPU": 4}], n_actors=2) == ActorPlan(2, 4, 0)
    assert plan_actors([{"CPU": 8}, {"CPU": 8}], cpus_per_actor=3) == ActorPlan(4, 3, 0)
    assert plan_actors([{"CPU": 16, "GPU": 2}, {"CPU": 4}]) == ActorPlan(2, 8, 1)
    assert plan_actors([{"CPU": 16, "GPU": 2}], n_actors=1, cpus_per_actor=2) == ActorPlan(1, 2, 1)
    with pytest.raises(RayExtractionError, match="room for 2 model actors"):
        plan_actors([{"CPU": 16, "GPU": 2}], n_actors=3)
    with pytest.raises(RayExtractionError, match="room for no model actor"):
        plan_actors([{"CPU": 1}, {"CPU": 1}], cpus_per_actor=2)
    with pytest.raises(RayExtractionError, match="room for 2 model actors"):
        plan_actors([{"CPU": 1}, {"CPU": 1}], n_actors=3)
    with pytest.raises(ValueError, match="n_actors"):
        plan_actors([{"CPU": 2}], n_actors=0)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "extract_vectors.py"), *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_without_ray_option_ray_is_never_imported(tmp_path):
    Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / "a.png")
    meta = write_csv(tmp_path / "m.csv", [{"urn": "a", "path": "a.png", "date": "1950"}])
    code = ("import sys, extract_vectors, siamese.ray_extract\n"
            f"status = extract_vectors.main([{str(meta)!r}, {str(tmp_path / 'v')!r}, '--model', "
            "'colour-histogram', '--quiet'])\n"
            "assert status == 0, status\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
    assert len(VectorStore(tmp_path / "v")) == 1


def test_ray_option_without_ray_installed_is_one_line_naming_the_install(tmp_path):
    (tmp_path / "no_ray").mkdir()
    (tmp_path / "no_ray" / "ray.py").write_text("raise ImportError('No module named ray (simulated)')\n")
    Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / "a.png")
    meta = write_csv(tmp_path / "m.csv", [{"urn": "a", "path": "a.png", "date": "1950"}])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "no_ray"),
                                                       os.environ.get("PYTHONPATH", "")]))
    result = run_cli(str(meta), str(tmp_path / "v"), "--ray", "--model", "colour-histogram", env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("extract_vectors.py: error: ")
    assert 'pip install ".[ray]"' in result.stderr and "ray[data]" in result.stderr
    assert not (tmp_path / "v").exists()


def test_an_address_where_no_head_answers_is_one_line_at_once(tmp_path):
    """Not ray.init's ten minutes of retrying."""
    pytest.importorskip("ray.data")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "m.csv").write_text("urn,path,date\na,a.png,1950\n")
    started = time.monotonic()
    result = run_cli(str(tmp_path / "m.csv"), str(tmp_path / "v"), "--ray", f"127.0.0.1:{port}")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"nothing answers at the Ray cluster's address 127.0.0.1:{port}" in result.stderr
    assert time.monotonic() - started < 60


def test_ray_options_are_checked_on_the_command_line(tmp_path):
    (tmp_path / "m.csv").write_text("urn,path,date\n")
    for args, message in ((["--ray-actors", "2"], "--ray-actors only applies with --ray"),
                          (["--ray", "--ray-actors", "0"], "--ray-actors must be at least 1"),
                          (["--ray", "--ray-cpus-per-actor", "0"], "--ray-cpus-per-actor must be at least 1"),
                          (["--ray", "--workers", "4"], "--workers is for extraction in this process")):
        result = run_cli(str(tmp_path / "m.csv"), str(tmp_path / "v"), *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert result.stderr.count("\n") == 1
    assert not (tmp_path / "v").exists()
