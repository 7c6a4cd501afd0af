"""The Serve deployment: the HTTP API, and the replica that decodes and tokenizes.

Each replica owns one decoder (one per GPU): concurrent requests are gathered by `serve.batch` and
their videos decoded together (one DALI batch on a GPU), then each video is tokenized alone, as
`tokenize_video` does, so a response equals `tokenize_video` on the same file bit for bit.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at runtime, and
# Serve's ingress wraps the methods where string annotations no longer resolve.
import asyncio
import ctypes
import hmac
import os
import shutil
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from ray import serve

from rlt.dataset._files import cache_root
from rlt.dataset._remote import is_url, local_path
from rlt.pipeline import VideoDecodeError, decode_clips, tokenize_clips
from rlt.serve._config import RequestOptions, ServeConfig, UnknownOptionError, parse_options
from rlt.serve._control import ControlView
from rlt.serve._page import PAGE, PAGE_HEADERS
from rlt.serve._stats import Stats
from rlt.serve._watch import watch_prometheus
from rlt.serve._wire import MEDIA_TYPE, to_arrow_stream

api = FastAPI(title="rlt-prep serve")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Job:
    """One request's video, waiting for its batch."""

    name: str
    path: str
    options: RequestOptions


_UPLOADS = "uploads"


def _remove_dead_uploads(root: Path) -> None:
    """Removes the upload folders of replicas of this host that died without cleaning up (killed)."""
    prefix = f"{_UPLOADS}-{socket.gethostname()}-"
    for folder in root.glob(f"{prefix}*"):
        pid = folder.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _load_malloc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _load_malloc_trim()


def _release_freed_memory() -> None:
    """Hands the memory a batch freed back to the system. Each batch allocates and frees a few
    MB-sized buffers (frames, tokens, the response); glibc raises its mmap threshold past such sizes
    once they are freed and then serves them from its heaps, which fragment: the replica's private
    memory grew without bound under load (385 MB to 1.3 GB in 60 s, benchmarks/bench_serve.py),
    where with this it stays flat."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


async def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    async for chunk in request.stream():  # chunked: read it (a path request's body is empty)
        if chunk:
            return True
    return False


# Serve pickles the class when it is decorated: what it uses must be defined above it.
@serve.deployment(max_ongoing_requests=64)
@serve.ingress(api)
class Tokenizer:
    """The ingress and the tokenizer in one replica: the request's bytes go to disk here, where they
    are decoded, and never through Ray's object store."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.control = ControlView()
        self._lock = threading.Lock()
        # Uploads are written here and removed after decoding; the folder goes with the replica.
        root = cache_root() / "serve"
        root.mkdir(parents=True, exist_ok=True)
        _remove_dead_uploads(root)
        self.uploads = Path(tempfile.mkdtemp(prefix=f"{_UPLOADS}-{socket.gethostname()}-{os.getpid()}-", dir=root))
        local_root = config.allow_root is not None and not is_url(config.allow_root)
        self.allow_root = os.path.realpath(local_path(config.allow_root or "")) if local_root else None
        # One thread does every batch's work: the replica's one decoder. Handing batches to the
        # default pool's threads in turn gave each of them its own malloc arena, and the replica's
        # private memory grew by about 200 MB under load (benchmarks/bench_serve.py).
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="rlt-serve-tokenize")
        batched: Any = self._tokenize_batch  # serve.batch's setters, which its type hints do not show
        batched.set_max_batch_size(config.max_batch_size)
        batched.set_batch_wait_timeout_s(config.batch_wait_s)

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "uploads", ""), ignore_errors=True)

    # --- the endpoints -------------------------------------------------------------------------

    @api.get("/")
    @api.get("/status")
    def page(self) -> HTMLResponse:
        # Static, so it needs no token: its data comes from /v1/status, which does.
        return HTMLResponse(PAGE, headers=PAGE_HEADERS)

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        # 503 once SIGTERM came: a load balancer stops sending work while the server drains.
        if await self.control.draining():
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @api.get("/v1/status")
    async def status(self, request: Request) -> JSONResponse:
        self._authorize(request)
        snapshot = self.stats.snapshot()
        snapshot["draining"] = await self.control.draining()
        if self.config.watch is not None:
            snapshot["watch"] = await self.control.watch()
        return JSONResponse(snapshot)

    @api.get("/metrics")
    async def metrics(self, request: Request) -> PlainTextResponse:
        self._authorize(request)
        text = self.stats.prometheus()
        if self.config.watch is not None:
            text += watch_prometheus(await self.control.watch())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @api.post("/v1/retry")
    async def retry(self, request: Request) -> JSONResponse:
        """Watch mode: the failed videos are tried again at the next round."""
        self._authorize(request)
        if self.config.watch is None:
            raise HTTPException(404, "this server watches no SOURCE: start it as rlt-prep serve DATASET --watch SOURCE")
        await self.control.ask_retry()
        return JSONResponse({"retry": "the failed videos are tried again at the next round"}, status_code=202)

    @api.post("/v1/tokenize")
    async def tokenize(self, request: Request) -> Response:
        started = time.monotonic()
        self.stats.begin()
        code = 500
        try:
            if await self.control.draining():
                raise HTTPException(503, "the server is shutting down and takes no new work", {"Retry-After": "5"})
            response = await self._tokenize(request)
            code = 200
            return response
        except HTTPException as e:
            code = e.status_code
            raise
        finally:
            self.stats.end(code, time.monotonic() - started)

    # --- the work ------------------------------------------------------------------------------

    async def _tokenize(self, request: Request) -> Response:
        self._authorize(request)
        query = dict(request.query_params)
        try:
            options = parse_options(query)
        except ValueError as e:
            raise HTTPException(400 if isinstance(e, UnknownOptionError) else 422, str(e)) from None
        if "path" in query:
            if await _has_body(request):
                raise HTTPException(400, "give either the video's bytes as the body or path=, not both")
            path = self._allowed_path(query["path"])
            job = Job(query.get("name", query["path"]), path, options)
            return await self._run(job)
        upload = await self._receive(request)
        try:
            return await self._run(Job(query.get("name", "upload"), str(upload), options))
        finally:
            upload.unlink(missing_ok=True)

    async def _run(self, job: Job) -> Response:
        result = await self._tokenize_batch(job)
        if isinstance(result, VideoDecodeError):
            if is_url(job.path) and result.reason.startswith("cannot be fetched"):
                raise HTTPException(404, f"{job.name}: {result.reason}")
            raise HTTPException(422, f"{job.name}: not a video this server can decode: {result.reason}")
        if isinstance(result, ValueError):
            raise HTTPException(422, f"{job.name}: {result}")
        return Response(result, media_type=MEDIA_TYPE)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _tokenize_batch(self, jobs: list[Job]) -> list[bytes | VideoDecodeError | ValueError]:
        # The decoders and torch release the GIL; a thread keeps the event loop taking requests.
        return await asyncio.get_running_loop().run_in_executor(self._worker, self._work, jobs)

    def _work(self, jobs: list[Job]) -> list[bytes | VideoDecodeError | ValueError]:
        results: list[bytes | VideoDecodeError | ValueError] = [ValueError("not run")] * len(jobs)
        groups: dict[Any, list[int]] = {}
        for k, job in enumerate(jobs):
            groups.setdefault(job.options.decode_key, []).append(k)
        for (sampling, backend), members in groups.items():
            decoded = decode_clips([(jobs[k].name, jobs[k].path) for k in members], sampling=sampling, backend=backend)
            for k, item in zip(members, decoded, strict=True):
                if isinstance(item, VideoDecodeError):
                    # An upload's temporary file is the replica's business: the reason names the video.
                    item = VideoDecodeError(jobs[k].name, item.reason.replace(jobs[k].path, jobs[k].name))
                    self.stats.failed(video=jobs[k].name, reason=item.reason)
                    results[k] = item
                    continue
                try:
                    packed = tokenize_clips([item], jobs[k].options.rlt)
                except ValueError as e:  # options that do not fit the clip (e.g. frames and tubelets)
                    self.stats.failed(video=jobs[k].name, reason=str(e))
                    results[k] = e
                    continue
                self.stats.done(clips=packed.num_clips, kept=packed.tokens.shape[0], dense=packed.dense_tokens)
                results[k] = to_arrow_stream(packed)
        _release_freed_memory()
        return results

    async def _receive(self, request: Request) -> Path:
        """The body, written to a file of the replica's upload folder; 413 past the size limit."""
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPException(413, f"the body is {int(declared)} bytes; this server takes at most {limit}")
        fd, name = tempfile.mkstemp(dir=self.uploads, suffix=".video")
        path, size = Path(name), 0
        try:
            with os.fdopen(fd, "wb") as file:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise HTTPException(413, f"the body is over {limit} bytes, the most this server takes")
                    file.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if size == 0:
            path.unlink(missing_ok=True)
            raise HTTPException(400, "the body is empty: post the video's bytes, or give path=")
        return path

    def _allowed_path(self, given: str) -> str:
        """``given`` (a path, a ``file://`` URL, or under a URL root an object's URL), relative to the
        allowed root or absolute; 403 outside it."""
        root = self.config.allow_root
        if root is None:
            raise HTTPException(403, "this server takes no paths: it was started without --allow-root")
        outside = HTTPException(403, f"{given} is outside the allowed root {root}")
        if is_url(root):  # an object store: the URL must lie below the root's, with no . or .. in it
            base = root.rstrip("/")
            url = given if is_url(given) else f"{base}/{given}"
            if given.startswith("/") or not url.startswith(base + "/"):
                raise outside
            if any(part in ("", ".", "..") for part in url[len(base) + 1 :].split("/")):
                raise outside
            return url
        local_root = self.allow_root  # set: the root is a folder
        if local_root is None or is_url(given):
            raise outside
        # The real path: a link inside the root that points outside it is outside.
        real = os.path.realpath(os.path.join(local_root, str(local_path(given))))
        if os.path.commonpath([real, local_root]) != local_root:
            raise outside
        if not os.path.isfile(real):
            raise HTTPException(404, f"{given}: no such file under the allowed root")
        return real

    def _authorize(self, request: Request) -> None:
        token = self.config.token
        if token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise HTTPException(
                401,
                "missing bearer token: send 'Authorization: Bearer <token>'" if not given else "wrong bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )
