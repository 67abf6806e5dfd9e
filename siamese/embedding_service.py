"""One model for every worker: uploads are embedded in a process of its own.

With `app.py --workers N` each worker that embedded an upload held its own copy of the model
(TensorFlow and Inception's weights: about 470 MiB more per worker at full scale, measured with
bench/serve_load.py --upload), so N workers held N copies, where issue 11 asks a worker to stay small.
Here the server's parent starts one embedding process before it forks the workers; a worker decodes
the upload itself (its limits, its errors) and sends the model input (a 299 x 299 x 3 array) over a
Unix socket, and gets the vector back. The process:

* is a fresh interpreter (`python -m siamese.embedding_service`), not a fork: TensorFlow's threads do
  not survive a fork, and the workers' memory stays free of it;
* loads the model on its first upload (at start with `app.py --preload-model`) and embeds one image
  at a time (the model already uses every core for one), answering each worker's connection on a
  thread of its own;
* is authenticated (a random key, the socket in a private 0700 folder), started again by the parent
  when it dies (uploads meanwhile answer 503 "try again"), and exits when its parent is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Listener

import numpy as np

from siamese.backbones import BackboneError, Embedder, shared_embedder

CONNECT_SECONDS = 20.0  # how long a worker waits for the process to listen (at start, after a restart)
EMBED_SECONDS = 300.0  # how long a worker waits for a vector: the model's first load, a queue of uploads
ORPHAN_POLL_SECONDS = 1.0

logger = logging.getLogger("siamese.embedding_service")


class RemoteEmbedder:
    """An Embedder (batch of model inputs -> vectors) that asks the embedding process; thread-safe (one
    connection per call). BackboneError, which uploads answer with 503, when the process cannot."""

    def __init__(self, address: str, authkey: bytes) -> None:
        self.address = address
        self._authkey = authkey

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        deadline = time.monotonic() + CONNECT_SECONDS
        while True:
            try:
                connection = Client(self.address, family="AF_UNIX", authkey=self._authkey)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise BackboneError("the embedding process is not running (being started again?); "
                                        "try again in a minute") from None
                time.sleep(0.1)
        try:
            with connection:
                connection.send(np.ascontiguousarray(batch))
                if not connection.poll(EMBED_SECONDS):
                    raise BackboneError(f"the model gave no vector within {EMBED_SECONDS:.0f} s (busy with "
                                        "other uploads); try again later")
                status, payload = connection.recv()
        except (EOFError, OSError) as error:
            raise BackboneError(f"the embedding process stopped while embedding ({error}); "
                                "try again") from None
        if status != "ok":
            raise BackboneError(payload)
        return payload


class EmbeddingService:
    """The embedding process of a server: start() it before forking workers, give them embedder(),
    restart_if(pid) when a child exits, stop() at the end."""

    def __init__(self, model: str, preload: bool = False) -> None:
        self.model = model
        self.preload = preload  # load the model when the process starts, not on the first upload
        self._directory = tempfile.mkdtemp(prefix="siamese-embedding-")  # 0700: only this user
        self.address = os.path.join(self._directory, "socket")
        self._authkey = os.urandom(32)
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.address)  # a dead process's socket
        self.process = subprocess.Popen(
            [sys.executable, "-m", "siamese.embedding_service", self.address, self.model, str(os.getpid()),
             "preload" if self.preload else "lazy"],
            stdin=subprocess.PIPE, start_new_session=True)  # its own session: Ctrl-C reaches the parent
        assert self.process.stdin is not None
        self.process.stdin.write(self._authkey.hex().encode())
        self.process.stdin.close()

    def embedder(self) -> Embedder:
        return RemoteEmbedder(self.address, self._authkey)

    def restart_if(self, pid: int) -> bool:
        """Start the process again when `pid` (a child the parent saw exit) was it."""
        if self.process is None or pid != self.process.pid:
            return False
        logger.warning("the embedding process %d exited; starting another", pid)
        self.start()
        return True

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self._directory, ignore_errors=True)


def _answer(connection, model: str) -> None:  # noqa: ANN001 - a multiprocessing Connection
    with connection:
        try:
            batch = connection.recv()
        except (EOFError, OSError):
            return  # the worker went away
        try:
            answer = ("ok", np.asarray(shared_embedder(model)(batch), dtype=np.float32))
        except BackboneError as error:
            answer = ("error", str(error))
        except Exception as error:  # noqa: BLE001 - told to the worker (a 503), not a dead process
            logger.exception("embedding failed")
            answer = ("error", f"embedding failed: {type(error).__name__}: {error}")
        with contextlib.suppress(OSError):  # the worker went away meanwhile (its request timed out)
            connection.send(answer)


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(ORPHAN_POLL_SECONDS)
    os._exit(0)


def preload(model: str) -> None:
    """Load the model now, on a thread of its own, so that the first upload is as fast as the others
    (an upload arriving meanwhile waits for this load, not for a second one)."""
    def load() -> None:
        try:
            shared_embedder(model)
        except Exception as error:  # noqa: BLE001 - the first upload says it again, as a 503
            logger.warning("the model could not be loaded: %s", error)
    threading.Thread(target=load, name="preload-model", daemon=True).start()


def serve(address: str, authkey: bytes, model: str, parent: int, load_now: bool = False) -> None:
    """The embedding process: answer connections until terminated or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it (SIGTERM)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    if load_now:
        preload(model)
    with Listener(address, family="AF_UNIX", authkey=authkey) as listener:
        while True:
            try:
                connection = listener.accept()
            except (OSError, EOFError, AuthenticationError):  # a stranger, or a worker that went away
                continue
            threading.Thread(target=_answer, args=(connection, model), daemon=True).start()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    serve(sys.argv[1], bytes.fromhex(sys.stdin.read().strip()), sys.argv[2], int(sys.argv[3]),
          load_now=sys.argv[4] == "preload")
