"""Starting and stopping the service: the dataset's lock and the watcher in watch mode, Ray
(embedded, or a cluster), the control actor, Serve's HTTP proxy and the replicas; draining on SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Any

from rlt._lock import lock_output
from rlt.serve._config import ServeConfig
from rlt.serve._watch import Source, Watcher
from rlt.tokenize_offline._append import GrowingDataset
from rlt.tokenize_offline._executor import Executor, start_ray
from rlt.tokenize_offline._output import Output

log = logging.getLogger(__name__)

APP_NAME = "rlt-prep"
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _signal_handlers() -> dict[int, Any]:
    """This process's handlers of SIGINT and SIGTERM (none off the main thread, where they cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in _SIGNALS}


class Server:
    """A running service; `stop` (or leaving the ``with`` block) drains and shuts down what `start` started."""

    def __init__(self, config: ServeConfig, resources: contextlib.ExitStack, *, started_ray: bool) -> None:
        self.config, self._resources, self._started_ray = config, resources, started_ray
        self.control: Any = None
        self.watcher: Watcher | None = None
        self._executor: Executor | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None  # what stopped the watcher, if anything did
        self.stopped = threading.Event()  # set when the watcher ends on its own (an error)
        self._closed = False  # `stop` ran

    @property
    def url(self) -> str:
        return self.config.url

    def _watch(self, watcher: Watcher, executor: Executor) -> None:
        self.watcher, self._executor = watcher, executor
        self._thread = threading.Thread(target=self._run_watcher, name="rlt-prep-watch", daemon=True)
        self._thread.start()

    def _run_watcher(self) -> None:
        assert self.watcher is not None
        try:
            self.watcher.run()
        except BaseException as e:  # e.g. a full disk: the server stops and says so
            log.error("error: the watcher stopped: %s", e)
            self.error = e
            self.stopped.set()

    def stop(self) -> None:
        """Drains: replicas refuse new work (503), the watcher takes no new shard and publishes
        those that commit within ``drain_s``, then Serve waits for the requests in flight. Once."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.control is not None:
                with contextlib.suppress(Exception):  # a replica that cannot ask answers as before
                    import ray

                    ray.get(self.control.drain.remote(), timeout=5)
            if self.watcher is not None and self._thread is not None:
                self.watcher.stop()
                self._thread.join(self.config.drain_s)
                if self._thread.is_alive():
                    log.warning(
                        "rlt-prep serve: shards still running after %gs are discarded (their temporary "
                        "folders never become shards; a restart runs them again)",
                        self.config.drain_s,
                    )
                elif self._executor is not None:
                    self._executor.__exit__(None, None, None)
            import ray
            from ray import serve

            if ray.is_initialized():
                # Deleting the app first stops its replicas gracefully, each answering the requests
                # it holds, while the proxies still carry the answers; serve.shutdown alone takes the
                # proxies down at once, and the clients of requests in flight lose their connection.
                with contextlib.suppress(Exception):  # an app that never deployed
                    serve.delete(APP_NAME)
                serve.shutdown()
            if self._started_ray:
                from rlt.tokenize_offline._executor import shutdown_ray

                shutdown_ray(embedded=not (self.config.ray_address or os.environ.get("RAY_ADDRESS")))
                self._started_ray = False
        finally:
            self._resources.close()  # the dataset's lock

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(config: ServeConfig) -> Server:
    """Starts the service and returns once it answers at ``config.url``.

    Joins ``config.ray_address`` (or ``$RAY_ADDRESS``), else the Ray this process already runs,
    else starts an embedded local Ray, as ``rlt-prep tokenize`` does. In watch mode the dataset's
    lock is taken first, so a second server (or a `rlt-prep tokenize`) on the same DATASET is
    refused before anything starts.

    Raises:
        OutputLockedError: another process writes DATASET.
        ConfigMismatchError: DATASET was made with other options.
    """
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise ImportError('rlt-prep serve needs Ray Serve: pip install "ray[serve]"') from e
    from rlt.serve import _control
    from rlt.serve._app import Tokenizer

    address = config.ray_address or os.environ.get("RAY_ADDRESS") or None
    resources = contextlib.ExitStack()
    server = Server(config, resources, started_ray=False)
    try:
        watch = config.watch
        dataset = source = executor = None
        if watch is not None:
            source = Source(watch.source)
            output = Output(watch.dataset)
            output.local.mkdir(parents=True, exist_ok=True)
            resources.enter_context(lock_output(output.local))
            executor = Executor(
                watch.tokenize,
                address=address,
                workers=watch.workers,
                gpus_per_task=watch.gpus_per_task,
                videos_per_batch=watch.videos_per_batch,
            )
            dataset = GrowingDataset(output, watch.tokenize, executor)
        if not ray.is_initialized():
            # ray.init installs handlers of its own for SIGTERM, which abort the process: the
            # process's own (`serve`'s, which drain) are put back.
            handlers = _signal_handlers()
            # An embedded Ray serves this machine alone: its node listens on loopback, whatever --host is.
            start_ray(address, loopback=True)
            server._started_ray = True
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        server.control = _control.create()
        gpus = int(ray.cluster_resources().get("GPU", 0))
        replicas = config.replicas or max(gpus, 1)
        tokenizer: Any = Tokenizer  # a Serve Deployment, which the class's type does not show
        deployment = tokenizer.options(
            num_replicas=replicas,
            ray_actor_options={"num_gpus": 1 if gpus else 0},
            # How long a stopping replica may take to answer the requests it holds.
            graceful_shutdown_timeout_s=config.drain_s,
        )
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(deployment.bind(config), name=APP_NAME, route_prefix="/", blocking=False)
        if watch is not None and dataset is not None and source is not None and executor is not None:
            control = server.control
            watcher = Watcher(
                dataset,
                source,
                poll_s=watch.poll_s,
                retry_failed=watch.retry_failed,
                on_status=lambda status: control.put_watch.remote(status),
                retry_requested=lambda: bool(ray.get(control.take_retry.remote())),
            )
            server._watch(watcher, executor.__enter__())
    except BaseException:
        server.stop()
        raise
    return server


def serve(config: ServeConfig) -> None:
    """Runs the service until SIGINT or SIGTERM, then drains (see `Server.stop`).

    Raises:
        OSError, ValueError: the watcher stopped on an error (a full disk...); the server drained.
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    # Before start: a SIGTERM while it starts drains as soon as it is up.
    previous = {sig: signal.signal(sig, on_signal) for sig in _SIGNALS}

    def restore() -> None:  # a second signal then stops the drain as it would any process
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    try:
        with start(config) as server:
            log.warning("rlt-prep serve: listening on %s", server.url)
            if config.watch is not None:
                log.warning("rlt-prep serve: watching %s into %s", config.watch.source, config.watch.dataset)
            while not stop.wait(0.5) and not server.stopped.is_set():
                pass
            log.warning("rlt-prep serve: draining")
            restore()
    finally:
        restore()
    if server.error is not None:
        raise server.error
