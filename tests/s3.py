"""A real S3 API on loopback for the tests: moto's standalone server, spoken to as one speaks to AWS.

Only 127.0.0.1 is ever contacted: the endpoint comes from ``AWS_ENDPOINT_URL``, which pyarrow and
boto both read.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass(frozen=True)
class S3:
    """The server's endpoint and the environment that points pyarrow, boto and subprocesses at it."""

    endpoint: str
    env: dict[str, str]

    def bucket(self) -> str:
        """A new, empty bucket; its URL ``s3://NAME``."""
        name = f"test-{uuid.uuid4().hex[:12]}"
        self.filesystem().create_dir(name)
        return f"s3://{name}"

    def filesystem(self) -> Any:
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(
            endpoint_override=self.endpoint,
            access_key="test",
            secret_key="test",
            region="us-east-1",
            allow_bucket_creation=True,
            allow_bucket_deletion=True,
        )

    def objects(self, url: str) -> dict[str, bytes]:
        """Every object below ``url``, by path relative to it."""
        import pyarrow.fs as pafs

        fs, root = self.filesystem(), url.removeprefix("s3://").rstrip("/")
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        out = {}
        for info in infos:
            if info.type == pafs.FileType.File:
                with fs.open_input_stream(info.path) as f:
                    out[info.path[len(root) + 1 :]] = bytes(f.read())
        return out

    def put(self, url: str, data: bytes) -> None:
        with self.filesystem().open_output_stream(url.removeprefix("s3://")) as f:
            f.write(data)


def optional_moto() -> Any:
    """moto's server, from the test extra: skipped where it is not installed, failed under CI."""
    try:
        return pytest.importorskip("moto.server")
    except pytest.skip.Exception:
        if os.environ.get("CI"):
            pytest.fail("CI must install moto[server] (the test extra in pyproject.toml)")
        raise


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3]:
    server = optional_moto().ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    try:
        yield S3(endpoint, env)
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: S3, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> S3:
    """The S3 server, with this process's environment pointing at it and a cache folder of its own."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RLT_PREP_CACHE", str(tmp_path_factory.mktemp("cache")))
    return s3_server
