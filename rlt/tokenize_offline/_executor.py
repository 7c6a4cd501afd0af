"""Where shards run: this process's threads first, then the embedded Ray; or a Ray cluster.

On the embedded default (no Ray address):

- One worker runs every shard in this process. Ray would add its start (about 4.5 s on a 2-core
  machine), the imports of fresh workers (about 2 s) and its shutdown (about 1.5 s), and gain
  nothing.
- Several workers start at once as threads of this process (the decoders and torch release the
  GIL while they work). The shards still left after ``ray_after`` seconds (by default none: at once)
  go to an embedded Ray, started while the threads go on; once Ray hands back its first shard, each
  thread stops after its current one. So Ray's start-up is never time lost, its worker processes
  keep a crashing decoder from taking the job down and scale past the GIL, and a job that ``ray_after``
  covers ends on the threads without ever paying for Ray.

With an address, every shard is a Ray task on that cluster. Either way each shard is run by exactly
one executor, and `run_shard` commits it atomically, so being killed at any point is safe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlt.pipeline import usable_cores
from rlt.tokenize_offline._config import TokenizeConfig
from rlt.tokenize_offline._shard import ShardSpec, run_shard

log = logging.getLogger(__name__)

# Seconds of work in this process before the embedded Ray is brought up for what is left. By default
# Ray starts at once and the threads fill its start-up: the job is a Ray job, as its users expect.
# Bringing Ray up costs about 8 core-seconds on 2 cores (start, fresh workers' imports, shutdown),
# which a short job never wins back: `ray_after` lets such jobs end on the threads (bench_cpu_path,
# 48 short videos, 2 workers: 8.1 s with Ray at once, 4.3 s on threads alone, 5.7 s on one worker).
RAY_AFTER = 0.0


class Executor:
    """Runs a job's shards (see the module docstring) and yields each one's result as it lands.

    Used as a context manager: a cluster is joined on entry (planning needs its CPU count), and a
    Ray started here is shut down on exit.
    """

    def __init__(
        self,
        config: TokenizeConfig,
        *,
        address: str | None,
        workers: int | None,
        gpus_per_task: float | None,
        videos_per_batch: int,
        ray_after: float = RAY_AFTER,
    ) -> None:
        self.config, self.videos_per_batch, self.ray_after = config, videos_per_batch, ray_after
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.requested, self.gpus_per_task = workers, gpus_per_task
        self.workers = workers or usable_cores()
        self._started_ray = False
        self._threads: _Threads | None = None
        self._left: _Pending | None = None

    def __enter__(self) -> Executor:
        if self.address:
            self._start_ray()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._threads is not None:
            # On an error: let the threads finish their shards (each commits whole) before leaving.
            self._threads.stop()
            self._threads.join()
        if self._started_ray:
            shutdown_ray(embedded=self.address is None)

    def run(self, out: str | Path, pending: list[ShardSpec]) -> Iterator[dict[str, Any]]:
        """Runs the pending shards and yields each one's result as it completes."""
        left = self._left = _Pending(pending)
        if not left:
            return
        if self.address is None:
            self._threads = _Threads(self._run_here(out), left, self.workers)
            deadline = time.monotonic() + self.ray_after if self.workers > 1 else float("inf")
            while self._threads.busy() and not (left and time.monotonic() >= deadline):
                # Woken by a result, or by the deadline while shards are left for Ray. Past the
                # deadline with none left, a timeout of 0 would spin on the GIL the threads need
                # (a watch round of one shard took 1.8 s instead of 0.25 s).
                wait = max(0.0, min(deadline - time.monotonic(), 1.0)) if left else 1.0
                result = self._threads.get(timeout=wait)
                if result is not None:
                    yield result
            if not left:
                yield from self._threads.drain()
                return
        yield from self._on_ray(out, left)

    def stop(self) -> None:
        """Takes no more shards: `run` ends once those already started have committed (from any
        thread, e.g. on SIGTERM)."""
        if self._left is not None:
            self._left.clear()

    def _run_here(self, out: str | Path) -> Any:
        def run(spec: ShardSpec) -> dict[str, Any]:
            return run_shard(out, spec, self.config, videos_per_batch=self.videos_per_batch)

        return run

    def _on_ray(self, out: str | Path, left: _Pending) -> Iterator[dict[str, Any]]:
        threads = self._threads
        try:
            ray = self._start_ray()  # the threads, if any, go on meanwhile
        except (RuntimeError, ConnectionError) as e:
            if threads is None:
                raise
            # The embedded Ray would only have helped: the threads carry the job on.
            log.warning("the embedded Ray did not start (%s); the shards go on in this process", e)
            yield from threads.drain()
            return
        # Ray re-runs a task whose worker or node died; application errors are not retried.
        task = ray.remote(num_cpus=1, num_gpus=self.gpus_per_task, max_retries=5)(run_shard)
        running: list[Any] = []
        while True:
            if threads is not None:
                yield from threads.ready()
            while len(running) < self.workers and (spec := left.pop()) is not None:
                running.append(task.remote(str(out), spec, self.config, videos_per_batch=self.videos_per_batch))
            if running:
                done, running = ray.wait(running, num_returns=1, timeout=0.1 if threads is not None else None)
                for ref in done:
                    if threads is not None:
                        threads.stop()  # Ray delivers: the threads stop after their current shard
                    yield ray.get(ref)
            elif threads is not None and threads.busy():
                result = threads.get(timeout=0.1)
                if result is not None:
                    yield result
            else:
                return

    def _start_ray(self) -> Any:
        import ray

        if not ray.is_initialized():
            start_ray(self.address, num_cpus=self.workers)
            self._started_ray = True
        resources = ray.cluster_resources()
        if self.gpus_per_task is None:
            self.gpus_per_task = 0.25 if resources.get("GPU", 0) > 0 else 0.0
        if self.gpus_per_task > max(resources.get("GPU", 0), 0.0):
            # Ray would queue such tasks for ever, waiting for a GPU that never comes.
            raise ValueError(
                f"--gpus-per-task {self.gpus_per_task} asks each task for more GPU than the Ray cluster has "
                f"({resources.get('GPU', 0):g} GPUs); use --gpus-per-task 0, or a cluster with GPUs"
            )
        if resources.get("CPU", 0) < 1:
            raise ValueError("the Ray cluster has no CPU to run a task on; add a worker node with CPUs")
        if self.requested is None:
            self.workers = max(int(resources.get("CPU", 1)), 1)
        return ray


def start_ray(address: str | None, *, num_cpus: int | None = None, loopback: bool = False) -> None:
    """Joins the Ray cluster at ``address``, or starts an embedded local Ray of ``num_cpus`` CPUs
    (default: the usable cores) whose session files go to `ray_temp_dir`; with ``loopback``, its
    node listens on 127.0.0.1 only (a local service's Ray, which no other machine joins)."""
    import ray

    if address:
        check_reachable(address)
        ray.init(address=address, logging_level=logging.WARNING)
        return
    _say_if_a_local_head_runs()
    loopback_only: dict[str, Any] = {"_node_ip_address": "127.0.0.1"} if loopback else {}
    ray.init(
        # "local": a new instance of our own, even where `ray start` left a head (or
        # its record) that ray.init would otherwise join.
        address="local",
        num_cpus=num_cpus or usable_cores(),
        include_dashboard=False,
        logging_level=logging.WARNING,
        object_store_memory=200 * 1024 * 1024,
        # Ray's session files go to our cache folder, not the system's temp folder.
        _temp_dir=str(ray_temp_dir()),
        **loopback_only,
    )


def shutdown_ray(*, embedded: bool) -> None:
    """Shuts down this process's Ray; for an ``embedded`` one (`start_ray` without an address),
    removes its session files too."""
    import ray

    session = _session_dir()
    ray.shutdown()
    if session is not None and embedded:
        # The embedded Ray's logs and sockets: nothing of the run stays outside OUT.
        shutil.rmtree(session, ignore_errors=True)
        for leftover in session.parent.iterdir():  # links to the session, now dangling
            if leftover.is_symlink() and not leftover.exists():
                leftover.unlink()
        if session.parent.name.startswith("rlt-prep-ray-"):
            with contextlib.suppress(OSError):  # another run's session may still be there
                session.parent.rmdir()


def _session_dir() -> Path | None:
    import ray

    # Ray names its session folder only through its node object (no public API as of Ray 2.60).
    node = getattr(ray._private.worker, "_global_node", None)
    try:
        return Path(node.get_session_dir_path()) if node is not None else None
    except AttributeError:
        return None


# How long a Ray address may take to answer before the job says it cannot be reached.
CONNECT_TIMEOUT = 10.0


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Raises a ValueError within ``timeout`` seconds when nothing answers at ``address``
    (``host:port`` or ``ray://host:port``); ray.init itself would retry for minutes."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
            return
    except ValueError:
        raise ValueError(f"--ray-address {address!r} is not host:port or ray://host:port") from None
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__)
        raise ValueError(
            f"cannot reach a Ray cluster at {address} ({reason} within {timeout:g} s); check --ray-address "
            f"(or RAY_ADDRESS), or leave it out to run on an embedded Ray"
        ) from None


def _say_if_a_local_head_runs() -> None:
    """Notes a head started by `ray start` on this machine: the job runs on its own Ray, not on it."""
    try:
        from ray._private.utils import read_ray_address  # no public API for `ray start`'s record

        address = read_ray_address()
    except (ImportError, OSError):
        return
    if not address:
        return
    with contextlib.suppress(ValueError):
        check_reachable(address, timeout=1.0)
        log.warning(
            "a Ray head started with `ray start` runs at %s; this job starts an embedded Ray of its own. "
            "To run on that head instead, pass --ray-address %s (or stop it with `ray stop`).",
            address,
            address,
        )


# Ray puts Unix sockets at <temp dir>/session_<date>_<time>_<pid>/sockets/plasma_store, and a
# socket's path may not exceed 107 bytes.
_SOCKET_ROOM = 107 - len("/session_2026-11-24_09-38-16_594996_4194304/sockets/plasma_store")


def ray_temp_dir() -> Path:
    """Where the embedded Ray keeps its session while a job runs; each run's session is removed
    when it ends.

    ``$XDG_CACHE_HOME/rlt-prep/ray`` (``~/.cache/rlt-prep/ray``), or, where that path is too long
    for Ray's sockets, ``rlt-prep-ray-<uid>`` in the system's temp folder (or in ``/tmp``).
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    fallback = f"rlt-prep-ray-{os.getuid()}"
    candidates = [cache / "rlt-prep" / "ray", Path(tempfile.gettempdir()) / fallback, Path("/tmp") / fallback]
    folder = next((c for c in candidates if len(str(c)) <= _SOCKET_ROOM), candidates[0])
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class _Pending:
    """The shards no executor has taken yet, shared by the threads and the Ray loop."""

    def __init__(self, specs: list[ShardSpec]) -> None:
        self._specs = deque(specs)
        self._lock = threading.Lock()

    def pop(self) -> ShardSpec | None:
        with self._lock:
            return self._specs.popleft() if self._specs else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._specs)

    def clear(self) -> None:
        with self._lock:
            self._specs.clear()


class _Threads:
    """Threads of this process taking shards from `_Pending` until it is empty or they are stopped."""

    def __init__(self, run: Any, left: _Pending, count: int) -> None:
        self._run, self._left = run, left
        self._results: queue.Queue[dict[str, Any] | BaseException] = queue.Queue()
        self._stopped = threading.Event()
        self._threads = [threading.Thread(target=self._loop, name=f"rlt-shards-{i}", daemon=True) for i in range(count)]
        for thread in self._threads:
            thread.start()

    def _loop(self) -> None:
        while not self._stopped.is_set() and (spec := self._left.pop()) is not None:
            try:
                self._results.put(self._run(spec))
            except BaseException as e:  # handed to the caller's thread, which raises it
                self._results.put(e)
                return

    def get(self, timeout: float) -> dict[str, Any] | None:
        """The next result, or None after ``timeout`` seconds; raises a thread's error."""
        try:
            result = self._results.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(result, BaseException):
            self.stop()
            raise result
        return result

    def ready(self) -> Iterator[dict[str, Any]]:
        """The results already there."""
        while (result := self.get(timeout=0)) is not None:
            yield result

    def drain(self) -> Iterator[dict[str, Any]]:
        """Every result still to come."""
        while self.busy():
            result = self.get(timeout=0.1)
            if result is not None:
                yield result

    def busy(self) -> bool:
        """Whether a thread still runs or a result waits to be read."""
        return any(t.is_alive() for t in self._threads) or not self._results.empty()

    def stop(self) -> None:
        self._stopped.set()

    def join(self) -> None:
        for thread in self._threads:
            thread.join()
