"""app.py --workers 2: real forked server processes on one port, over the colour-histogram collection.

They answer exactly as one process does; a killed worker is replaced while the other keeps answering;
SIGTERM stops the parent and every worker."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

import pytest
import webtest

from app import Collection, make_app

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(port: int, path: str, timeout: float = 10) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def children_of(pid: int) -> set[int]:
    """The live processes whose parent is `pid` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def is_embedding_process(pid: int) -> bool:
    try:
        return b"siamese.embedding_service" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def workers_of(pid: int) -> set[int]:
    """The server's workers: its children but the embedding process."""
    return {child for child in children_of(pid) if not is_embedding_process(child)}


def embedding_process_of(pid: int) -> set[int]:
    return {child for child in children_of(pid) if is_embedding_process(child)}


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {seconds} s")
        time.sleep(0.1)


@contextmanager
def workers_server(collection, directory: Path, workers: int = 2, extra: tuple[str, ...] = ()):
    port = free_port()
    log = directory / f"server-{port}.log"
    command = [sys.executable, "app.py", "--vector-dir", str(collection.vector_dir), "--index-dir",
               str(collection.index_dir), "--thumbnails", str(collection.thumbnail_dir), "--port", str(port),
               "--threads", "4", "--workers", str(workers), *extra]
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=output, stderr=output)
    try:
        def answering() -> bool:
            if process.poll() is not None:
                pytest.fail(f"the server exited ({process.returncode}): {log.read_text()[-2000:]}")
            try:
                return get(port, "/api/collection", timeout=5)[0] == 200
            except OSError:
                return False

        wait_for(answering, START_TIMEOUT, "the server did not answer")
        forked = workers if workers > 1 else 0  # one worker: the server serves itself
        wait_for(lambda: len(workers_of(process.pid)) == forked, 30, f"{workers} workers did not start")
        yield process, port, log
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def test_two_workers_answer_exactly_as_one_process_does(histogram_collection, tmp_path):
    one = webtest.TestApp(make_app(Collection(histogram_collection.vector_dir, histogram_collection.index_dir,
                                              histogram_collection.thumbnail_dir)))
    paths = [f"/api/neighbours?{urlencode({'urn': urn, 'step': step, 'nns': 5})}"
             for urn in histogram_collection.urns[::6] for step in ("all", "all,10,1")]
    paths += [f"/api/item?{urlencode({'urn': histogram_collection.urns[1]})}", "/api/collection",
              "/api/neighbours?urn=nobody", "/api/neighbours?nns=abc"]
    with workers_server(histogram_collection, tmp_path) as (process, port, _):
        for path in paths * 2:  # each path more than once: both workers answer some of them
            status, body = get(port, path)
            expected = one.get(path, expect_errors=True)
            assert (status, body) == (expected.status_int, expected.body), path


def test_a_killed_worker_is_replaced_while_the_other_keeps_answering(histogram_collection, tmp_path):
    path = f"/api/neighbours?{urlencode({'urn': histogram_collection.urns[3], 'step': 'all,1'})}"
    with workers_server(histogram_collection, tmp_path) as (process, port, log):
        workers = workers_of(process.pid)
        outcomes: list[int | str] = []
        done = threading.Event()

        def ask() -> None:
            while not done.is_set():
                try:
                    outcomes.append(get(port, path)[0])
                except (OSError, http.client.HTTPException) as error:  # a request the killed worker held
                    outcomes.append(type(error).__name__)

        client = threading.Thread(target=ask)
        client.start()
        try:
            wait_for(lambda: len(outcomes) >= 20, 30, "20 answers did not come")
            victim = min(workers)
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: victim not in workers_of(process.pid) and len(workers_of(process.pid)) == 2,
                     30, "the killed worker was not replaced")
            before = len(outcomes)
            wait_for(lambda: len(outcomes) >= before + 50, 60, "50 more answers did not come")
        finally:
            done.set()
            client.join(timeout=30)
        assert process.poll() is None
        replaced = workers_of(process.pid)
        assert len(replaced) == 2 and victim not in replaced and replaced & workers  # the other one stayed
        failures = [outcome for outcome in outcomes if outcome != 200]
        assert len(failures) <= 1, failures  # at most the one request the killed worker was answering
        assert outcomes[-50:] == [200] * 50
        assert f"worker {victim} exited (signal 9); starting another" in log.read_text()


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigterm_stops_the_parent_and_every_worker(histogram_collection, tmp_path):
    with workers_server(histogram_collection, tmp_path) as (process, port, _):
        wait_for(lambda: len(embedding_process_of(process.pid)) == 1, 30, "no embedding process")
        workers = children_of(process.pid)
        assert len(workers) == 3 and all(alive(pid) for pid in workers)  # 2 workers, 1 embedding process
        process.terminate()
        assert process.wait(timeout=30) == 0
    wait_for(lambda: not any(alive(pid) for pid in workers), 10, "the workers did not stop")
    with pytest.raises(OSError):
        get(port, "/api/collection", timeout=2)


def png(colour: tuple[int, int, int]) -> bytes:
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def post_upload(port: int, image: bytes, fields: dict[str, str], timeout: float = 60) -> tuple[int, bytes]:
    boundary = "test-boundary"
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items())
    body += (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n'
             "Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", "/api/search", body=body,
                           headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_workers_embed_uploads_in_one_process_of_their_own_and_answer_as_one_process_does(
        histogram_collection, tmp_path):
    one = webtest.TestApp(make_app(Collection(histogram_collection.vector_dir, histogram_collection.index_dir,
                                              histogram_collection.thumbnail_dir)))
    images = [png((200, 30, 30)), png((20, 20, 220)), png((250, 250, 250))]
    with workers_server(histogram_collection, tmp_path) as (process, port, _):
        wait_for(lambda: len(embedding_process_of(process.pid)) == 1, 30, "no embedding process")
        for image in images * 2:  # both workers embed some
            status, body = post_upload(port, image, {"nns": "4", "step": "all,1"})
            expected = one.post("/api/search", {"nns": "4", "step": "all,1"},
                                upload_files=[("image", "q.png", image, "image/png")])
            assert (status, body) == (200, expected.body)
        status, body = post_upload(port, b"not an image", {"nns": "4"})  # the worker decodes: its errors
        assert status == 400 and b"image" in body


def test_a_killed_embedding_process_is_started_again_and_uploads_go_on(histogram_collection, tmp_path):
    image = png((120, 200, 40))
    with workers_server(histogram_collection, tmp_path) as (process, port, log):
        wait_for(lambda: len(embedding_process_of(process.pid)) == 1, 30, "no embedding process")
        assert post_upload(port, image, {"nns": "3"})[0] == 200
        (victim,) = embedding_process_of(process.pid)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: embedding_process_of(process.pid) - {victim}, 30, "no new embedding process")
        status, body = post_upload(port, image, {"nns": "3"})
        assert status == 200, body
        assert f"the embedding process {victim} exited; starting another" in log.read_text()
        assert len(workers_of(process.pid)) == 2  # the workers were not touched


def test_a_killed_server_leaves_no_process_behind_and_its_port_free(histogram_collection, tmp_path):
    with workers_server(histogram_collection, tmp_path) as (process, port, _):
        wait_for(lambda: len(embedding_process_of(process.pid)) == 1, 30, "no embedding process")
        children = children_of(process.pid)
        try:
            process.kill()  # no chance to stop anything
            process.wait(timeout=10)
            wait_for(lambda: not any(alive(pid) for pid in children), 10, "a child outlived its server")
            with pytest.raises(OSError):
                get(port, "/api/collection", timeout=2)
        finally:
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_busy_port_is_one_line_and_exit_status_2(histogram_collection, workers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "app.py", "--vector-dir", str(histogram_collection.vector_dir), "--index-dir",
             str(histogram_collection.index_dir), "--thumbnails", str(histogram_collection.thumbnail_dir),
             "--port", str(port), "--workers", str(workers)],
            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"app.py: error: cannot listen on 127.0.0.1:{port}: the port is "
                                        "in use (another server there?); choose another --port"]
    assert done.stdout == ""


def test_an_unknown_host_is_one_line_and_exit_status_2(histogram_collection):
    done = subprocess.run(
        [sys.executable, "app.py", "--vector-dir", str(histogram_collection.vector_dir), "--index-dir",
         str(histogram_collection.index_dir), "--host", "no-such-host.invalid"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert "unknown host 'no-such-host.invalid'" in done.stderr and "--host" in done.stderr


def test_make_serve_and_make_demo_listen_where_port_and_host_say():
    wanted = {"serve": "--host 0.0.0.0 --port 8091 --preload-model", "demo": "PORT=8091 HOST=0.0.0.0 bash"}
    for target, expected in wanted.items():
        done = subprocess.run(["make", "-n", target, "PORT=8091", "HOST=0.0.0.0"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert expected in done.stdout.replace("\\\n", " ").replace("\t", " ")
    script = (ROOT / "demo" / "run_demo.sh").read_text()
    assert '--host "$HOST" --port "$PORT" --preload-model' in script


def tensorflow_in(pid: int) -> bool:
    """Whether the process has TensorFlow's library mapped (the model loaded)."""
    try:
        return "libtensorflow" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def test_workers_never_load_the_model_the_embedding_process_does_once(app_collection, tmp_path, emoji_pairs,
                                                                    emoji_metadata):
    image = (emoji_metadata.parent / emoji_pairs[0][0]["path"]).read_bytes()
    with workers_server(app_collection, tmp_path) as (process, port, _):
        wait_for(lambda: len(embedding_process_of(process.pid)) == 1, 30, "no embedding process")
        (embedding,) = embedding_process_of(process.pid)
        assert not tensorflow_in(embedding)  # loaded by the first upload, not before
        for _ in range(3):
            status, body = post_upload(port, image, {"nns": "3"}, timeout=180)
            assert status == 200, body
        assert tensorflow_in(embedding)
        assert not any(tensorflow_in(worker) for worker in workers_of(process.pid) | {process.pid})


@pytest.mark.parametrize("workers", [1, 2])
def test_preload_model_loads_it_at_start_where_uploads_are_embedded(app_collection, tmp_path, emoji_pairs,
                                                                   emoji_metadata, workers):
    with workers_server(app_collection, tmp_path, workers, ("--preload-model",)) as (process, port, _):
        if workers > 1:
            wait_for(lambda: len(embedding_process_of(process.pid)) == 1, 30, "no embedding process")
            (embedding,) = embedding_process_of(process.pid)
        else:
            embedding = process.pid
        wait_for(lambda: tensorflow_in(embedding), 180, "the model was not loaded at start")
        image = (emoji_metadata.parent / emoji_pairs[1][1]["path"]).read_bytes()
        status, body = post_upload(port, image, {"nns": "3"}, timeout=180)
        assert status == 200, body
