"""Shared test setup: the `needs_cuda` marker and the device list the tests run over."""

from __future__ import annotations

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
FAIL_WITHOUT_CUDA = os.environ.get("FAIL_WITHOUT_CUDA", "") not in ("", "0")

# Parametrize a test body over the devices: `@pytest.mark.parametrize("device", DEVICES)`.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda)]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "needs_cuda" in item.keywords and not CUDA:
        if FAIL_WITHOUT_CUDA:
            pytest.fail("FAIL_WITHOUT_CUDA=1 but torch sees no CUDA device")
        pytest.skip("needs a CUDA GPU")
