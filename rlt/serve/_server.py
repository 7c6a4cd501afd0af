"""Starting and stopping the service: Ray (embedded, or a cluster), Serve's HTTP proxy, the replicas."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from rlt.serve._config import ServeConfig

log = logging.getLogger(__name__)

APP_NAME = "rlt-prep"


class Server:
    """A running service; `stop` (or leaving the ``with`` block) shuts down what `start` started."""

    def __init__(self, config: ServeConfig, *, started_ray: bool, address: str | None) -> None:
        self.config, self._started_ray, self._address = config, started_ray, address

    @property
    def url(self) -> str:
        return self.config.url

    def stop(self) -> None:
        from ray import serve

        serve.shutdown()
        if self._started_ray:
            from rlt.tokenize_offline._executor import shutdown_ray

            shutdown_ray(embedded=self._address is None)
            self._started_ray = False

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(config: ServeConfig) -> Server:
    """Starts the service and returns once it answers at ``config.url``.

    Joins ``config.ray_address`` (or ``$RAY_ADDRESS``), else the Ray this process already runs,
    else starts an embedded local Ray, as ``rlt-prep tokenize`` does.
    """
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise ImportError('rlt-prep serve needs Ray Serve: pip install "ray[serve]"') from e
    from rlt.serve._app import Tokenizer
    from rlt.tokenize_offline._executor import start_ray

    address = config.ray_address or os.environ.get("RAY_ADDRESS") or None
    started_ray = False
    if not ray.is_initialized():
        # An embedded Ray serves this machine alone: its node listens on loopback, whatever --host is.
        start_ray(address, loopback=True)
        started_ray = True
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        replicas = config.replicas or max(gpus, 1)
        tokenizer: Any = Tokenizer  # a Serve Deployment, which the class's type does not show
        deployment = tokenizer.options(num_replicas=replicas, ray_actor_options={"num_gpus": 1 if gpus else 0})
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(deployment.bind(config), name=APP_NAME, route_prefix="/", blocking=False)
    except BaseException:
        Server(config, started_ray=started_ray, address=address).stop()
        raise
    return Server(config, started_ray=started_ray, address=address)


def serve(config: ServeConfig) -> None:
    """Runs the service until SIGINT or SIGTERM."""
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    with start(config) as server:
        # After start: ray.init installs handlers of its own for SIGTERM, which would abort.
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            log.warning("rlt-prep serve: listening on %s", server.url)
            stop.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
