"""What the server's process and its replicas share: one small Ray actor.

The process that runs `rlt-prep serve` owns the watcher and the signals; the HTTP API runs in Serve
replicas, other processes. The actor carries the watcher's status to the replicas, a retry asked
over HTTP to the watcher, and the draining flag that SIGTERM raises (replicas then refuse new work
with 503).
"""

from __future__ import annotations

import time
from typing import Any

import ray

NAME = "rlt-prep-control"
NAMESPACE = "rlt-prep"
# How long a replica trusts the draining flag it last read.
FLAG_TTL_S = 0.5


@ray.remote(num_cpus=0)
class Control:
    """The shared state; its methods are called remotely."""

    def __init__(self) -> None:
        self.watch: dict[str, Any] | None = None
        self.retry = False
        self.draining = False

    def put_watch(self, status: dict[str, Any]) -> None:
        self.watch = status

    def get_watch(self) -> dict[str, Any] | None:
        return self.watch

    def ask_retry(self) -> None:
        self.retry = True

    def take_retry(self) -> bool:
        asked, self.retry = self.retry, False
        return asked

    def drain(self) -> None:
        self.draining = True

    def is_draining(self) -> bool:
        return self.draining


def create() -> Any:
    """The server's control actor (one per Ray namespace: a second server on the cluster replaces it)."""
    return Control.options(name=NAME, namespace=NAMESPACE, get_if_exists=True).remote()  # type: ignore[attr-defined]


class ControlView:
    """A replica's view of the control actor, found by name on first use; the draining flag cached."""

    def __init__(self) -> None:
        self._handle: Any = None
        self._draining, self._read_at = False, 0.0

    @property
    def handle(self) -> Any:
        if self._handle is None:
            self._handle = ray.get_actor(NAME, namespace=NAMESPACE)
        return self._handle

    async def draining(self) -> bool:
        now = time.monotonic()
        if now - self._read_at > FLAG_TTL_S:
            try:
                self._draining = await self.handle.is_draining.remote()
            except ValueError:  # no such actor: a server started without one (tests), or gone
                self._draining = False
            self._read_at = now
        return self._draining

    async def watch(self) -> dict[str, Any] | None:
        """The watcher's last status (None before its first)."""
        try:
            status: dict[str, Any] | None = await self.handle.get_watch.remote()
        except ValueError:  # no such actor
            return None
        return status

    async def ask_retry(self) -> None:
        await self.handle.ask_retry.remote()
