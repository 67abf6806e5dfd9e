"""Extraction on a Ray cluster (`extract_vectors.py --ray`): the same vector store, filled by model
actors on many machines or GPUs.

Why it is shaped like this: the store has one writer (VectorStoreWriter's lock) that commits batch by
batch, which is what makes a killed run resumable. So the driver, the process that runs
extract_vectors.py, stays that one writer: it reads the CSV (`read_metadata`), skips the urns the store
holds, and commits what comes back in the CSV's order, exactly as the run in one process does
(`extract_vectors.commit_batch`, rejects.csv). Only (row number, image file) pairs go to the cluster, a
Ray Data pipeline of model actors, each of which loads the model once and decodes and embeds batch
after batch; vectors and the reasons for rejected images come back. Killing the driver loses at most
the batches in flight, and the same command resumes.

What the cluster must offer: every node reads the images at the absolute path the driver resolves (a
shared filesystem mounted at the same place), and has the project's dependencies and model weights
at the driver's versions. The driver ships its own `siamese` package with the job (Ray's runtime_env
py_modules), so the actors run the driver's code. docs/scale-out.md tells how to run it.

Ray is imported inside these functions only: without --ray it is never imported, and a missing Ray
is a one-line error naming how to install it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from siamese import images
from siamese.backbones import DEFAULT_BACKBONE, TENSORFLOW_LOGS, get_backbone, import_tensorflow_quietly
from siamese.metadata import Record, read_metadata
from siamese.vector_store import VectorStoreWriter

if TYPE_CHECKING:
    from extract_vectors import ExtractionReport

INSTALL_HINT = 'pip install ".[ray]" in the checkout, or pip install "ray[data]"'
DEFAULT_CPUS_PER_ACTOR = 4
"""CPU actors: cores per model actor unless asked (fewer on smaller nodes). A middle way between one
TensorFlow per core (a model's memory, 1.3 GB with TensorFlow itself, per core) and one per node
(a model's threads do not keep many cores busy: its layers are one after another)."""
CALLS_PER_ACTOR = 2
"""Batches an actor works on at once: one is decoded while the other is in the model (which takes one
batch at a time), as the decoding threads run ahead of the model in one process."""


class RayExtractionError(RuntimeError):
    """Ray is missing, the cluster cannot be reached or cannot hold the actors asked for, or an actor
    failed (its error is told in one line)."""


def import_ray():
    """The `ray` module with Ray Data, or RayExtractionError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data needs pandas and pyarrow too
    except ImportError as error:
        raise RayExtractionError(f"--ray needs Ray Data, which cannot be imported here ({error}); "
                                 f"install it: {INSTALL_HINT}") from None
    return ray


@contextlib.contextmanager
def connected(address: str | None, worker_logs: bool = False) -> Iterator:
    """Ray, connected: this process's connection when it has one (a notebook or a test that called
    ray.init(runtime_env=job_runtime_env())), else `ray.init(address)` for the run, shut down after it.

    `address` None or "" (Ray's own rule): the cluster RAY_ADDRESS names, else the one `ray start`
    started on this machine, else a new local one; "local": a new local one, even where a cluster runs;
    "auto": the one started here, never a new one; "HOST:6379" or "ray://HOST:10001" (Ray Client):
    that cluster's head. A local cluster started here is gone with this process, even one killed with
    SIGKILL (its raylet, GCS and actors at once; Ray's two small agents a minute later).
    `worker_logs`: the actors' output on this terminal (--verbose: TensorFlow's lines); otherwise it is
    only in Ray's log files, and an actor's failure is told in one line.
    """
    ray = import_ray()
    if ray.is_initialized():
        if address:
            raise RayExtractionError(f"this process is already connected to a Ray cluster; leave out "
                                     f"the address {address!r} to use that one")
        yield ray
        return
    check_reachable(address or os.environ.get("RAY_ADDRESS") or "")
    options: dict = {"logging_level": logging.WARNING, "runtime_env": job_runtime_env(),
                     "log_to_driver": worker_logs}
    if address:
        options["address"] = address
    if address in (None, "", "local"):
        options["include_dashboard"] = False  # should it start a cluster for this run only
    try:
        ray.init(**options)
    except Exception as error:  # noqa: BLE001 - Ray raises many kinds (ConnectionError, RuntimeError, ...)
        where = address or os.environ.get("RAY_ADDRESS") or "this machine (a new local cluster)"
        raise RayExtractionError(f"cannot connect to the Ray cluster at {where}: "
                                 f"{_first_line(error)}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def check_reachable(address: str, timeout: float = 10) -> None:
    """RayExtractionError at once when nothing answers at a head's HOST:PORT (or ray://HOST:PORT):
    ray.init itself keeps retrying such an address for ten minutes and more. Other addresses ("",
    "auto", "local") are Ray's to resolve."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as error:
        raise RayExtractionError(
            f"nothing answers at the Ray cluster's address {address} ({error.strerror or error}); start "
            "its head there (`ray start --head`) or give the head's address: HOST:6379 (the GCS port), "
            "or ray://HOST:10001 (Ray Client)") from None


def job_runtime_env() -> dict:
    """What a Ray job that runs ModelActor needs (ray.init(runtime_env=...)): this process's `siamese`
    package, shipped to every node (py_modules), so that the actors run the driver's code whether or
    not the nodes have the project installed, or another version of it."""
    import siamese

    return {"py_modules": [os.path.dirname(os.path.abspath(siamese.__file__))]}


@dataclass(frozen=True)
class ActorPlan:
    """How many model actors, and what each one reserves on its node."""

    n_actors: int
    cpus_per_actor: int
    gpus_per_actor: int  # 0 or 1

    def describe(self) -> str:
        each = f"{self.cpus_per_actor} CPU{'s' if self.cpus_per_actor > 1 else ''}"
        if self.gpus_per_actor:
            each = f"1 GPU and {each}"
        return f"{self.n_actors} model actor{'s' if self.n_actors > 1 else ''}, {each} each"


def describe_cluster(nodes: Sequence[Mapping[str, float]]) -> str:
    cpus = sum(node.get("CPU", 0) for node in nodes)
    gpus = sum(node.get("GPU", 0) for node in nodes)
    return f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}, {cpus:g} CPUs, {gpus:g} GPUs"


def plan_actors(nodes: Sequence[Mapping[str, float]], n_actors: int | None = None,
                cpus_per_actor: int | None = None) -> ActorPlan:
    """The actors to start on a cluster whose alive nodes have these resources ({"CPU": 16, "GPU": 2}).

    With GPUs: one actor per GPU, each with its node's CPUs shared out among its GPUs (for decoding).
    Without: actors of DEFAULT_CPUS_PER_ACTOR cores (fewer on smaller nodes) filling every node; asked
    for `n_actors` only, each gets as many cores as lets them all fit. An actor never spans nodes, so
    what is asked must fit node by node (RayExtractionError otherwise: a pool that cannot start would
    wait for resources for ever).
    """
    for name, value in (("n_actors", n_actors), ("cpus_per_actor", cpus_per_actor)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive whole number, got {value!r}")
    cpus_of = [int(node.get("CPU", 0)) for node in nodes]
    gpus_of = [int(node.get("GPU", 0)) for node in nodes]
    gpus_per_actor = 1 if any(gpus_of) else 0

    def room(cpus: int) -> int:
        """How many actors of `cpus` cores (and gpus_per_actor GPUs) the nodes hold."""
        return sum(min(c // cpus, g if gpus_per_actor else c) for c, g in zip(cpus_of, gpus_of, strict=True))

    if cpus_per_actor is None:
        if gpus_per_actor:
            cpus_per_actor = max(1, min(c // g for c, g in zip(cpus_of, gpus_of, strict=True) if g))
        elif n_actors is not None:
            fitting = [cpus for cpus in range(1, max(cpus_of, default=0) + 1) if room(cpus) >= n_actors]
            cpus_per_actor = max(fitting, default=1)
        else:
            cpus_per_actor = min(DEFAULT_CPUS_PER_ACTOR, min((c for c in cpus_of if c > 0), default=1))
    available = room(cpus_per_actor)
    if n_actors is None:
        n_actors = available
    if available == 0 or n_actors > available:
        actor = f"model actor of {'1 GPU and ' if gpus_per_actor else ''}{cpus_per_actor} CPU(s)"
        held = (f"room for no {actor}" if available == 0 else
                f"room for {available} {actor.replace('actor', 'actors', 1)}, not {n_actors}")
        raise RayExtractionError(
            f"the Ray cluster ({describe_cluster(nodes)}) has {held}; ask for fewer actors (--ray-actors) "
            "or fewer CPUs each (--ray-cpus-per-actor), or add nodes")
    return ActorPlan(n_actors, cpus_per_actor, gpus_per_actor)


class ModelActor:
    """One model in one Ray actor: loaded once, then decoding and embedding batch after batch.

    A batch is {"index": row numbers, "file": absolute image paths}; the answer is the row numbers,
    the vectors (zeros for a rejected image) and the reasons ("" for an image that was embedded).
    Ray Data runs CALLS_PER_ACTOR calls at once in threads: one decodes while another is in the model,
    which takes one batch at a time (Pillow and TensorFlow release the GIL).
    """

    def __init__(self, model: str, weights: str | None, input_mode: str, max_pixels: int, threads: int,
                 tensorflow_logs: bool = False) -> None:
        if tensorflow_logs:
            os.environ[TENSORFLOW_LOGS] = "1"
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        images.set_max_pixels(max_pixels)  # this process's limit: the driver's --max-pixels
        self.backbone = get_backbone(model)
        images.check_input_mode(input_mode)
        self.input_mode = input_mode
        if self.backbone.name != "colour-histogram":  # every other model is TensorFlow's (Backbone.load)
            limit_tensorflow_threads(threads)
        self.embed = self.backbone.load(weights)
        self.model_lock = threading.Lock()
        self.decoders = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        size = self.backbone.input_size
        decoded = list(self.decoders.map(
            lambda path: images.model_input_or_reason(str(path), size, self.input_mode), batch["file"]))
        good = [row for row, result in enumerate(decoded) if not isinstance(result, str)]
        vectors = np.zeros((len(decoded), self.backbone.n_dimensions), dtype=np.float32)
        if good:
            pixels = np.stack([decoded[row] for row in good])
            with self.model_lock:
                vectors[good] = np.asarray(self.embed(pixels), dtype=np.float32)
        reasons = np.array([result if isinstance(result, str) else "" for result in decoded], dtype=object)
        return {"index": np.asarray(batch["index"]), "vector": vectors, "reason": reasons}


def limit_tensorflow_threads(threads: int) -> None:
    """TensorFlow imported quietly, its thread pools sized to the cores Ray gave this actor: by default
    each TensorFlow takes every core of the machine, and N actors on N cores would fight over them.
    Must run before the model is built (TensorFlow fixes its pools when it first runs an op)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import_tensorflow_quietly()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))


def extract_vectors_on_ray(metadata_csv: str | os.PathLike, vector_dir: str | os.PathLike,
                           images_root: str | os.PathLike | None = None, model: str = DEFAULT_BACKBONE,
                           weights: str | os.PathLike | None = None, batch_size: int = 64,
                           address: str | None = None, n_actors: int | None = None,
                           cpus_per_actor: int | None = None, progress: bool = True,
                           input_mode: str = "colour", max_pixels: int | None = None) -> ExtractionReport:
    """extract_vectors (same arguments, same store, same rejects.csv, same report), the images decoded
    and embedded by model actors on a Ray cluster.

    `address`: which cluster (see `connected`; None or "": RAY_ADDRESS or a new local one; a process
    already connected uses its connection, which must make `siamese` importable on the nodes:
    job_runtime_env()). `n_actors`, `cpus_per_actor`: see `plan_actors`.
    `max_pixels`: the actors' image size limit (default: this process's, images.MAX_PIXELS).
    Images, `images_root` and `weights` are read by the actors at their absolute paths.
    """
    # The driver's side only: the actors import this module, and need no more than the siamese package.
    from extract_vectors import ExtractionReport, write_rejects

    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    started = time.perf_counter()
    metadata_csv = Path(metadata_csv)
    vector_dir = Path(vector_dir)
    images_root = Path(os.path.abspath(images_root if images_root is not None else metadata_csv.parent))
    weights = None if weights is None else os.path.abspath(weights)
    max_pixels = images.MAX_PIXELS if max_pixels is None else max_pixels
    backbone = get_backbone(model)
    images.check_input_mode(input_mode)
    import_ray()  # before anything is read or written: a missing Ray is told first
    records, rejected_rows = read_metadata(metadata_csv)
    report = ExtractionReport(rejects=[(row.urn, row.path, f"CSV line {row.line}: {row.reason}")
                                       for row in rejected_rows])

    with VectorStoreWriter(vector_dir, backbone.name, backbone.n_dimensions, input_mode) as store:
        todo = [record for record in records if record.urn not in store.urns]
        report.already_stored = len(records) - len(todo)
        write_rejects(vector_dir, report.rejects)
        verbose = os.environ.get(TENSORFLOW_LOGS) == "1"  # --verbose
        if todo:
            with connected(address, worker_logs=verbose) as ray:
                nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
                plan = plan_actors(nodes, n_actors, cpus_per_actor)
                if progress:
                    print(f"Ray: {plan.describe()} on {describe_cluster(nodes)}", file=sys.stderr)
                settings = {"model": backbone.name, "weights": weights, "input_mode": input_mode,
                            "max_pixels": max_pixels, "threads": plan.cpus_per_actor,
                            "tensorflow_logs": verbose}
                batches = _embedded_batches([str(record.resolve(images_root)) for record in todo], plan,
                                            batch_size, settings)
                with contextlib.closing(batches), _progress_bar(len(todo), progress) as bar:
                    _commit_in_order(batches, todo, store, report, bar)
        report.total_in_store = len(store.store)
    report.seconds = time.perf_counter() - started
    return report


def _commit_in_order(batches: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]], todo: list[Record],
                     store: VectorStoreWriter, report: ExtractionReport, bar) -> None:
    """Commit the actors' batches as extract_vectors commits its own (`commit_batch`, rejects.csv after
    every batch that rejected something), checking that they come in the order of `todo`."""
    from extract_vectors import commit_batch, write_rejects

    done, rejects_written = 0, len(report.rejects)
    for indices, vectors, reasons in batches:
        if len(indices) == 0 or indices[0] != done or indices[-1] != done + len(indices) - 1:
            raise RuntimeError(f"Ray returned rows {indices[0]}-{indices[-1]} where row {done} was due: "
                               "the store's order would be lost")
        records = todo[done:done + len(indices)]
        done += len(indices)
        embedded = reasons == ""
        report.rejects.extend((record.urn, record.path, str(reason))
                              for record, reason in zip(records, reasons, strict=True) if reason)
        kept = [record for record, ok in zip(records, embedded, strict=True) if ok]
        if kept:
            commit_batch(store, kept, vectors[embedded], report)
        if len(report.rejects) != rejects_written:
            write_rejects(store.directory, report.rejects)
            rejects_written = len(report.rejects)
        bar.update(len(indices))
        bar.set_postfix(stored=report.stored, rejected=len(report.rejects))
    if done != len(todo):
        raise RuntimeError(f"Ray returned {done} of {len(todo)} rows")


def _progress_bar(total: int, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="extracting", disable=not progress, file=sys.stderr)


def _embedded_batches(files: list[str], plan: ActorPlan, batch_size: int, settings: dict
                      ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(row numbers, vectors, reasons) batch after batch, in the order of `files`.

    Ray Data's order is kept (preserve_order: its actors finish out of order, the driver commits in
    order); its own progress bars and log lines are left out (the driver has its bar). A failure
    inside an actor (a model that cannot be loaded there, an image path it cannot see) comes out as
    a RayExtractionError with the actor's own message.
    """
    import ray
    import ray.data

    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars,
             context.print_on_execution_start)
    data_logger = logging.getLogger("ray.data")
    saved_level = data_logger.level
    data_logger.setLevel(logging.CRITICAL)  # its failures come out as one RayExtractionError
    try:
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        items = [{"index": index, "file": file} for index, file in enumerate(files)]
        dataset = ray.data.from_items(items).map_batches(
            ModelActor,
            batch_size=batch_size,
            batch_format="numpy",
            fn_constructor_kwargs=settings,
            compute=ray.data.ActorPoolStrategy(size=plan.n_actors,
                                               max_concurrent_calls_per_actor=CALLS_PER_ACTOR,
                                               enable_true_multi_threading=True),
            num_cpus=plan.cpus_per_actor,
            num_gpus=plan.gpus_per_actor or None,
        )
    finally:
        (context.execution_options.preserve_order, context.enable_progress_bars,
         context.print_on_execution_start) = saved
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            yield batch["index"], batch["vector"], batch["reason"]
    except ray.exceptions.RayError as error:
        raise RayExtractionError(f"the extraction failed on the Ray cluster: {_cause(error)} (Ray's logs "
                                 "on each node, /tmp/ray/session_latest/logs, tell more)") from None
    finally:
        data_logger.setLevel(saved_level)


def _cause(error: BaseException) -> str:
    """The one line that says what went wrong inside Ray: the actor's own exception ("BackboneError:
    cannot load ..."), not Ray's wrappers around it. A task's error holds it (`cause`); an actor that
    died in __init__ only quotes its traceback, whose last line names it."""
    from ray.exceptions import RayError

    cause = getattr(error, "cause", None)
    if isinstance(cause, Exception) and not isinstance(cause, RayError):
        return f"{type(cause).__name__}: {_first_line(cause)}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
