"""Several server processes on one listening socket: the collection opened once, then forked.

One Python process answers with one interpreter lock, so on 2 cores a search-heavy load tops out at
what one core does (docs/benchmarks.md: about 200 step=1 answers a second). Here the parent opens the
collection (the store and the indices are memory-mapped, the items parsed once), binds the socket, and
forks `workers` children; each child is a complete waitress server (siamese/serving.py: every limit,
timeout and JSON error of issue 9) accepting from the shared socket. What a child holds on its own is
small: its threads' stacks, the answers being made, the reprint feature cache (at most 32 MiB), and
the model once it embeds an upload; the pages of the store, the descriptors and the Annoy files are the
parent's, shared by the page cache and copy-on-write.

Why not gunicorn's pre-fork arbiter: its workers read requests with a thread each (gthread), so slow
clients hold threads, and its own error answers are HTML; waitress reads asynchronously and answers
every error in JSON. The parent here only starts, watches and stops children:

* a child that dies (killed, crashed) is replaced at once; the others keep answering;
* SIGTERM or SIGINT (Ctrl-C) stops the children (SIGTERM, then SIGKILL after STOP_SECONDS) and
  returns; a child that cannot start (dies within a second, CRASH_LOOP times in a row) stops it all;
* a parent killed outright (SIGKILL) takes its children with it (Linux: the kernel sends them SIGTERM).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

from siamese.system import end_with_parent

STOP_SECONDS = 10.0  # what a child gets to finish its requests after SIGTERM
CRASH_LOOP = 5  # children in a row that die within a second of starting: a fault, not bad luck

logger = logging.getLogger("siamese.workers")


class _Stop(Exception):
    """Raised in the parent by SIGTERM / SIGINT, to leave its wait for children."""


def bind(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one), inherited by the children."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
        listener.listen(backlog)
    except OSError:
        listener.close()
        raise
    listener.setblocking(False)
    return listener


def _child(run: Callable[[], None], parent: int) -> None:
    """In a new child: default signal handling (SIGTERM ends it, Ctrl-C reaches it as KeyboardInterrupt;
    so does the parent's death, where the kernel can say), then serve until stopped; never returns into
    the parent's code."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    end_with_parent(parent, signal.SIGTERM)
    status = 0
    try:
        run()
    except KeyboardInterrupt:
        pass
    except BaseException:  # noqa: BLE001 - whatever it was, it ends this child only, with its traceback
        logging.getLogger("siamese.workers").exception("worker %d failed", os.getpid())
        status = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def serve_forked(run_child: Callable[[], None], workers: int,
                 on_other_exit: Callable[[int], object] | None = None) -> int:
    """Fork `workers` children that each call `run_child()` (serve on the inherited socket until
    stopped); replace those that die; return 0 after SIGTERM / SIGINT once all are stopped, 1 when
    children cannot start. `on_other_exit(pid)`: told when another child of this process exits (the
    embedding process, siamese/embedding_service.py, which it starts again)."""
    children: dict[int, float] = {}  # pid -> when it started

    def start() -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            _child(run_child, parent)
        children[pid] = time.monotonic()

    def stop(signum: int, frame: object) -> None:
        raise _Stop

    previous = {number: signal.signal(number, stop) for number in (signal.SIGTERM, signal.SIGINT)}
    # The parent's objects (the store's items, the urn table: tens of MiB at full scale) move to a
    # generation the collector never visits, so that a child's collections do not write to their pages
    # and copy them; the children share them for as long as they only read them.
    gc.collect()
    gc.freeze()
    quick_deaths = 0
    status = 0
    try:
        for _ in range(workers):
            start()
        while True:
            pid, code = os.wait()
            started = children.pop(pid, None)
            if started is None:
                if on_other_exit is not None:
                    on_other_exit(pid)
                continue
            quick_deaths = quick_deaths + 1 if time.monotonic() - started < 1.0 else 0
            how = (f"signal {os.WTERMSIG(code)}" if os.WIFSIGNALED(code)
                   else f"status {os.waitstatus_to_exitcode(code)}")
            if quick_deaths >= CRASH_LOOP:
                logger.error("worker %d exited (%s) within a second of starting, %d times in a row: "
                             "stopping", pid, how, quick_deaths)
                status = 1
                break
            logger.warning("worker %d exited (%s); starting another", pid, how)
            start()
    except _Stop:
        pass
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _stop_children(children)
    return status


def _stop_children(children: dict[int, float]) -> None:
    for pid in children:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while children and time.monotonic() < deadline:
        for pid in list(children):
            if _reaped(pid):
                children.pop(pid)
        time.sleep(0.05)
    for pid in list(children):
        _signal(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        children.pop(pid)


def _signal(pid: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, number)


def _reaped(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return True
