"""Serving the web app with waitress, set up to stay up under adversity, and the process-level settings
it needs (issue 9: no server taken down).

What waitress's defaults did here, found by an adversarial run, and what this module does instead:

* select() cannot watch a socket whose descriptor is 1024 or more, and a collection of many periods
  keeps an index file open per period (a collection spanning 440 years held 978): the process exited
  after 80 connections (ValueError: filedescriptor out of range in select()). Waitress polls instead
  (`asyncore_use_poll`), and the open-file limit is raised to what the system allows
  (`raise_open_file_limit`, which app.py calls before opening the collection: 1,100 yearly periods no
  longer crash the start).
* 100 connections at most, each held for 120 s of silence: 150 connections left open and idle made a
  normal request wait in the backlog for two minutes. Now 1,000 (fewer where the open-file limit could
  not be raised enough to hold them, `connection_limit`), closed after 30 s of silence, checked every 2 s;
  a slow client that keeps sending is not silent.
* A request body of up to 1 GB was read (and spooled to a temporary file) before the application
  could refuse it: a 300 MB POST filled /tmp before its 413. Waitress now refuses a Content-Length over
  the largest upload the application takes (MAX_REQUEST_BODY_BYTES) from the headers, before a byte of
  the body is read; a chunked body is cut off at the same size.
* Waitress's own answers (a malformed request, headers or body too large, a transfer encoding it does
  not implement, an application that failed outright) were plain text: they are JSON like every other
  error of this API, {"error": "...", "status": N}, with the headers of every answer (siamese/web.py).
* glibc gives each thread that allocates under contention its own memory arena and keeps the freed
  memory there: after six large uploads a server held 9.5 GB (53 MB with one arena).
  `bound_allocator_arenas` caps the arenas at 2.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
from collections.abc import Callable

from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.server import create_server as waitress_server
from waitress.task import ErrorTask

from siamese.params import shorten
from siamese.system import bound_allocator_arenas
from siamese.upload import FORM_OVERHEAD_BYTES, MAX_UPLOAD_BYTES
from siamese.web import error_body, with_response_headers

# Waitress refuses a body of max_request_body_size bytes or more; the application takes an upload of
# MAX_UPLOAD_BYTES plus the multipart form around it (siamese/upload.py), so one byte more.
LARGEST_BODY_BYTES = MAX_UPLOAD_BYTES + FORM_OVERHEAD_BYTES
CONNECTION_LIMIT = 1000  # 150 idle connections and 100 busy ones were the adversarial run's
SETTINGS = {
    "asyncore_use_poll": True,  # poll(), not select(): any descriptor number
    "channel_timeout": 30,  # seconds of silence before a connection is closed (waitress: 120)
    "cleanup_interval": 2,  # how often that is checked (waitress: 30)
    "max_request_body_size": LARGEST_BODY_BYTES + 1,
    # The request line and headers: a long urn and several steps are far below it (waitress: 256 KiB,
    # which a thousand connections could hold at once).
    "max_request_header_size": 64 * 1024,
}
# Descriptors a connection can hold: its socket, a spooled request body over waitress's inbuf_overflow
# (512 KiB: an upload), or an answer over outbuf_overflow (1 MiB) while it is sent.
DESCRIPTORS_PER_CONNECTION = 2
RESERVED_DESCRIPTORS = 256  # the model's files when it is loaded for a first upload, the upload's own

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ process settings

class ListenError(OSError):
    """The server cannot listen where it was told to; the message says why and which option to change."""


def listen_error(host: str, port: int, error: OSError) -> ListenError:
    """A one-line account of why host:port cannot be listened on."""
    where = f"{host}:{port}"
    if isinstance(error, socket.gaierror):
        return ListenError(f"cannot listen on {where}: unknown host {host!r} ({error.strerror}); "
                           "check --host (127.0.0.1: this machine only, 0.0.0.0: every address)")
    reasons = {errno.EADDRINUSE: "the port is in use (another server there?); choose another --port",
               errno.EACCES: "permission denied (ports below 1024 need privileges); choose a --port "
                             "above 1023",
               errno.EADDRNOTAVAIL: "this machine has no such address; check --host"}
    return ListenError(f"cannot listen on {where}: "
                       f"{reasons.get(error.errno, error.strerror or str(error))}")


def check_listen_address(host: str, port: int) -> None:
    """ListenError when host:port cannot be bound now (checked before the collection is opened, which
    takes a while: a busy port is said in a line at once, not after minutes, nor as a traceback)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
            probe.bind(address)
    except OSError as error:
        raise listen_error(host, port, error) from None


def raise_open_file_limit() -> int | None:
    """Raise this process's soft limit of open files (RLIMIT_NOFILE) to its hard limit; the soft limit
    now (None where there is no such limit, or it is unlimited).

    The soft limit is often 1,024, and a collection keeps a memory-mapped index file open per period
    (a 1,500-year collection indexed year by year: thousands); the hard limit is what the
    administrator allows without privileges.
    """
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    # Linux never allows an unlimited number; macOS reports an unlimited hard limit but caps it lower.
    for wanted in ([hard] if hard != resource.RLIM_INFINITY else []) + [1 << 20, 65536, 10240]:
        if wanted <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            continue
        return wanted
    return soft


def open_descriptors() -> int:
    """How many files and sockets this process has open now (0 where the system does not say)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder))
        except OSError:
            continue
    return 0


def connection_limit(wanted: int = CONNECTION_LIMIT) -> int:
    """`wanted`, or fewer where the open-file limit cannot hold that many connections besides what is
    open already (the collection's index files): waitress then stops accepting for a while instead of
    failing accept() with EMFILE in a loop, or a request thread failing to spool a body."""
    try:
        import resource
    except ImportError:
        return wanted
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    room = (soft - open_descriptors() - RESERVED_DESCRIPTORS) // DESCRIPTORS_PER_CONNECTION
    return max(16, min(wanted, room))


# ------------------------------------------------------------------------ waitress's own answers

def error_message(error: object, request: object, max_body: int, max_header: int) -> str:
    """What a client is told when waitress refuses its request (or the application failed outright);
    `error`: a waitress.utilities.Error, `request`: waitress's parser of the request."""
    code = getattr(error, "code", 500)
    detail = shorten(str(getattr(error, "body", "")), 200)
    if code == 413:
        length = getattr(request, "content_length", 0)
        size = f"the request body is {length:,} bytes" if length else "the request body is too large"
        return (f"{size}; at most {max_body - 1:,} are accepted (POST /api/search: an image of at most "
                f"{MAX_UPLOAD_BYTES // (1024 * 1024)} MB)")
    if code == 431:
        return f"the request line and headers are too large: at most {max_header:,} bytes together"
    if code == 400:
        return f"malformed HTTP request: {detail}"
    if code == 501:
        return f"not implemented: {detail} (send the body with a Content-Length)"
    if code >= 500:
        return "internal error (it is in the server's log)"
    return f"{getattr(error, 'reason', 'error')}: {detail}"


class JsonErrorTask(ErrorTask):
    """Waitress's ErrorTask with a JSON body, {"error", "status"}, and the headers of every answer.

    Waitress answers some requests itself, before (or instead of) the application: the error is a
    waitress.utilities.Error whose to_response() writes plain text, and ErrorTask.execute sends that.
    The errors are made deep in waitress's parser, so their class cannot be swapped; the task that
    answers them can: HTTPChannel.error_task_class is the hook, set on a channel subclass that the
    servers made by create_server() use (no global patch; other waitress servers in the process keep
    plain text). This is ErrorTask.execute (waitress 3.0) with the body and headers replaced: same status,
    the connection closed after the answer as waitress does.
    """

    def execute(self) -> None:
        error = self.request.error
        adjustments = self.channel.server.adj
        status = getattr(error, "code", 500)
        message = error_message(error, self.request, adjustments.max_request_body_size,
                                adjustments.max_request_header_size)
        body = json.dumps(error_body(status, message), ensure_ascii=False).encode("utf-8")
        self.status = f"{status} {getattr(error, 'reason', 'Internal Server Error')}"
        self.response_headers.extend(
            with_response_headers([("Content-Type", "application/json; charset=utf-8")]))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class JsonErrorChannel(HTTPChannel):
    """A waitress connection whose own error answers are JSON (JsonErrorTask)."""

    error_task_class = JsonErrorTask


# ------------------------------------------------------------------------------------ the server

def create_server(app: Callable, host: str | None, port: int | None, threads: int,
                  **adjustments: object) -> object:
    """A waitress server for `app`, bound to host:port (port 0: a free one, its `effective_port`) and not
    yet running (its run() serves until interrupted): SETTINGS, connection_limit(), JSON error answers.
    `adjustments`: more waitress settings, or other values for these; with `sockets` (already bound and
    listening, as a forked worker inherits them), host and port are None."""
    settings = {**SETTINGS, "connection_limit": connection_limit(), **adjustments}
    if host is not None:
        settings.update(host=host, port=port)
    socket_map: dict = {}
    server = waitress_server(app, map=socket_map, threads=threads, **settings)
    # One server per address (a host name can be IPv4 and IPv6): each makes its connections.
    for dispatcher in list(socket_map.values()):
        if isinstance(dispatcher, BaseWSGIServer):
            dispatcher.channel_class = JsonErrorChannel
    return server


def listening_on(server: object) -> list[tuple[str, int]]:
    """The (host, port) pairs `server` (create_server's) listens on."""
    listen = getattr(server, "effective_listen", None)
    return list(listen) if listen else [(server.effective_host, server.effective_port)]


def _process_settings() -> None:
    """Malloc arenas, the open-file limit, waitress's logging: what a serving process needs first."""
    bound_allocator_arenas()
    raise_open_file_limit()
    logging.basicConfig()  # waitress's errors go to stderr (as waitress.serve does); idempotent
    # With more visitors than threads, waitress warns of every queued request ("Task queue depth is
    # N"): under load that is a line per request, which floods the log and, if stderr is a pipe
    # nobody drains, blocks the server. Queueing is normal; errors are still logged.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)


def serve_workers(app: Callable, host: str, port: int, threads: int, workers: int, *,
                  ident: str = "siamese", on_listening: Callable[[str, int], None] | None = None,
                  on_other_exit: Callable[[int], object] | None = None, **adjustments: object) -> int:
    """Serve `app` from `workers` forked processes sharing one socket (siamese/workers.py), each a
    waitress server as serve() makes it, until SIGTERM / SIGINT; the exit status to end with.
    ListenError when host:port cannot be bound. `on_other_exit`: see workers.serve_forked."""
    from siamese import workers as forking

    _process_settings()
    try:
        listener = forking.bind(host, port)
    except OSError as error:
        raise listen_error(host, port, error) from None
    bound_host, bound_port = listener.getsockname()[:2]

    def run_child() -> None:
        server = create_server(app, None, None, threads, ident=ident, sockets=[listener], **adjustments)
        server.run()

    if on_listening is not None:
        on_listening(host if host not in ("", "0.0.0.0", "::") else bound_host, bound_port)
    try:
        return forking.serve_forked(run_child, workers, on_other_exit)
    finally:
        listener.close()


def serve(app: Callable, host: str, port: int, threads: int, *, ident: str = "siamese",
          on_listening: Callable[[str, int], None] | None = None, **adjustments: object) -> None:
    """Serve `app` with waitress until interrupted: the process settings first (malloc arenas, the
    open-file limit), then create_server(). `on_listening(host, port)`: called once listening, with the
    port bound (the one chosen when `port` is 0)."""
    _process_settings()
    try:
        server = create_server(app, host, port, threads, ident=ident, **adjustments)
    except OSError as error:
        raise listen_error(host, port, error) from None
    limit = server.adj.connection_limit
    if limit < CONNECTION_LIMIT and "connection_limit" not in adjustments:
        logger.warning("the open-file limit leaves room for %d connections at once (not %d); raise it "
                       "(ulimit -n) to serve more", limit, CONNECTION_LIMIT)
    if on_listening is not None:
        for bound_host, bound_port in listening_on(server):
            on_listening(bound_host, bound_port)
    server.run()
