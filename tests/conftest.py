"""Shared test setup: the `needs_cuda` marker and the device list the tests run over."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# PyAV before decord, as rlt does: decord's bundled FFmpeg would shadow PyAV's codecs.
import av  # noqa: F401
import pytest
import torch

from tests.videos import make_test_videos

# The S3 server fixtures (`s3`), for the tests of datasets on object storage.
pytest_plugins = ("tests.s3",)

CUDA = torch.cuda.is_available()
FAIL_WITHOUT_CUDA = os.environ.get("FAIL_WITHOUT_CUDA", "") not in ("", "0")


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process of a test: this checkout first on PYTHONPATH, then the
    paths already there (where packages may be installed, as on the GPU box), and ``extra``."""
    checkout = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (checkout, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


# Parametrize a test body over the devices: `@pytest.mark.parametrize("device", DEVICES)`.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda)]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "needs_cuda" in item.keywords and not CUDA:
        if FAIL_WITHOUT_CUDA:
            pytest.fail("FAIL_WITHOUT_CUDA=1 but torch sees no CUDA device")
        pytest.skip("needs a CUDA GPU")


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """rlt-prep's cache (records of checked shards, fetched and unpacked shards) below the tests'
    folders, never in the user's: tests that look into it set a folder of their own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RLT_PREP_CACHE", str(tmp_path_factory.mktemp("rlt-prep-cache")))
        yield


@pytest.fixture(scope="session")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Generated test videos by kind (see tests/videos.py)."""
    return make_test_videos(tmp_path_factory.mktemp("videos"))
