"""The server's configuration, and a request's options checked against the stages' own configs."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rlt.dataset._remote import is_url, local_path
from rlt.pipeline import ClipSampling, RLTConfig, check_backend
from rlt.tokenize_offline._config import TokenizeConfig

TOKEN_ENV = "RLT_PREP_SERVE_TOKEN"
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback interface only."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


@dataclass(frozen=True)
class WatchConfig:
    """Watch mode (`rlt-prep serve DATASET --watch SOURCE`, see `rlt.serve._watch`).

    Attributes:
        dataset: the dataset folder or URL the new videos' shards go to (the server holds its lock).
        source: a manifest, a folder of videos, or an object-store prefix.
        tokenize: the dataset's configuration, as `rlt-prep tokenize` takes it (a dataset made with
            another one is refused).
        poll_s: seconds between scans of SOURCE.
        retry_failed: try the failed videos again at the first round.
        workers, gpus_per_task, videos_per_batch: where and how the shards run, as in `rlt-prep tokenize`.
    """

    dataset: str
    source: str
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    poll_s: float = 2.0
    retry_failed: bool = False
    workers: int | None = None
    gpus_per_task: float | None = None
    videos_per_batch: int = 8

    def __post_init__(self) -> None:
        if not self.poll_s > 0:
            raise ValueError(f"poll_s must be > 0, got {self.poll_s!r}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.videos_per_batch < 1:
            raise ValueError(f"videos_per_batch must be >= 1, got {self.videos_per_batch}")


@dataclass(frozen=True)
class ServeConfig:
    """How `rlt-prep serve` runs.

    Attributes:
        host: the address the HTTP server binds; any other than loopback needs ``token``.
        port: its port.
        allow_root: the folder whose files requests may name by path (``path=``, or a ``file://``
            URL), or a URL (``s3://bucket/videos``) below which requests may name objects, fetched
            into the cache root as `rlt-prep tokenize` fetches them; None refuses every path request.
        token: the bearer token every request but ``/healthz`` must carry; None on loopback only.
        max_body_mb: the largest upload, in MiB (2**20 bytes); larger ones get 413.
        ray_address: a Ray cluster to run on; None starts an embedded local Ray.
        replicas: tokenizer replicas (each one decoder); None: one per GPU of the cluster, or one.
        max_batch_size: requests decoded together on a replica (one DALI batch on a GPU).
        batch_wait_s: how long a replica waits for more requests to fill a batch.
        watch: watch mode's configuration, or None for the HTTP API alone.
        drain_s: on SIGTERM, how long the running shards of watch mode may take to commit, and
            then each replica to answer the requests it holds, before the server stops anyway
            (an unfinished shard is discarded: it never becomes visible).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    allow_root: str | None = None
    token: str | None = None
    max_body_mb: float = 512
    ray_address: str | None = None
    replicas: int | None = None
    max_batch_size: int = 8
    batch_wait_s: float = 0.01
    watch: WatchConfig | None = None
    drain_s: float = 30.0

    def __post_init__(self) -> None:
        if not is_loopback(self.host) and not self.token:
            raise ValueError(
                f"binding {self.host} opens the server to other machines: give a bearer token with --token "
                f"(or ${TOKEN_ENV}), or bind 127.0.0.1"
            )
        if self.token is not None and (not self.token or any(c.isspace() for c in self.token)):
            raise ValueError("the token must be a non-empty string without spaces")
        if not (isinstance(self.port, int) and 0 < self.port < 65536):
            raise ValueError(f"port must be an int in 1..65535, got {self.port!r}")
        if not self.max_body_mb > 0:
            raise ValueError(f"max_body_mb must be > 0, got {self.max_body_mb!r}")
        if self.allow_root is not None and not is_url(self.allow_root) and not local_path(self.allow_root).is_dir():
            raise ValueError(f"--allow-root {self.allow_root}: no such folder")
        if self.replicas is not None and self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.drain_s < 0:
            raise ValueError(f"drain_s must be >= 0, got {self.drain_s!r}")
        if self.max_batch_size < 1 or self.batch_wait_s < 0:
            raise ValueError(
                f"max_batch_size must be >= 1 and batch_wait_s >= 0, got {self.max_batch_size}, {self.batch_wait_s}"
            )

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class RequestOptions:
    """A request's options, as the stages' configs validated them."""

    sampling: ClipSampling
    rlt: RLTConfig
    backend: str

    @property
    def decode_key(self) -> tuple[ClipSampling, str]:
        """Requests with the same key can be decoded together."""
        return self.sampling, self.backend


# The request fields that are not options of the stages.
REQUEST_FIELDS = ("path", "name")
_SAMPLING = {f.name: typing.get_type_hints(ClipSampling)[f.name] for f in dataclasses.fields(ClipSampling)}
_RLT = {f.name: typing.get_type_hints(RLTConfig)[f.name] for f in dataclasses.fields(RLTConfig)}
# `seed` is both the clip offsets' and random dropping's: one value sets both.
OPTIONS = tuple(dict.fromkeys([*_SAMPLING, *_RLT, "backend"]))


def parse_options(query: Mapping[str, str]) -> RequestOptions:
    """A request's options from its query string: the fields of `ClipSampling` and `RLTConfig`
    and ``backend``, spelled as the dataclasses spell them. As with ``rlt-prep tokenize --size``,
    ``size`` alone also sets ``crop``. ``none`` sets an optional field to None.

    Raises:
        ValueError: an unknown option (named, with the known ones), or a value the configs refuse.
    """
    unknown = sorted(set(query) - set(OPTIONS) - set(REQUEST_FIELDS))
    if unknown:
        raise UnknownOptionError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"the options are {', '.join(OPTIONS)} (and {', '.join(REQUEST_FIELDS)})"
        )
    sampling = {k: _convert(k, v, _SAMPLING[k]) for k, v in query.items() if k in _SAMPLING}
    if "size" in sampling and "crop" not in sampling:
        sampling["crop"] = sampling["size"]
    rlt = {k: _convert(k, v, _RLT[k]) for k, v in query.items() if k in _RLT}
    backend = query.get("backend", "auto")
    check_backend(backend)
    return RequestOptions(ClipSampling(**sampling), RLTConfig(**rlt), backend)


class UnknownOptionError(ValueError):
    """A request named an option that no stage has."""


def _convert(name: str, text: str, annotation: Any) -> Any:
    kinds = _kinds(annotation)
    if type(None) in kinds and text.lower() in ("none", "null", ""):
        return None
    for kind in (int, float):
        if kind in kinds:
            try:
                return kind(text)
            except ValueError:
                raise ValueError(f"{name} must be {'an int' if kind is int else 'a number'}, got {text!r}") from None
    return text  # a Literal of strings: the config checks the choice


def _kinds(annotation: Any) -> set[Any]:
    """The runtime types a (resolved) annotation allows; a Literal of strings is ``str``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return {k for arg in typing.get_args(annotation) for k in _kinds(arg)}
    if annotation in (int, float, type(None)):
        return {annotation}
    return {str}


def default_token() -> str | None:
    return os.environ.get(TOKEN_ENV) or None
