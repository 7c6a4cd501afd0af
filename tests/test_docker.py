"""docker/: the images install the project the README's way; compose.yaml is a valid cluster."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"


def readme_setup() -> str:
    """The set-up part of the README's main-job command: `python3 -m venv .venv && ... install -e .`."""
    readme = (ROOT / "README.md").read_text()
    demo = next(line for line in readme.splitlines() if "rlt-prep demo" in line and line.startswith("python3"))
    return demo.rsplit(" && ", 1)[0]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_images_install_the_readme_way_as_a_user(name: str) -> None:
    text = (ROOT / "docker" / name).read_text()
    assert f"RUN {readme_setup()}" in text
    assert re.search(r"^USER rlt$", text, re.M), "the image must not run as root"
    assert 'ENTRYPOINT ["rlt-prep"]' in text


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_the_user_owns_the_folders_it_writes(name: str) -> None:
    # WORKDIR creates a missing folder owned by root, and COPY --chown leaves the folder's owner
    # alone: the user's `python3 -m venv .venv` then fails with "Permission denied" (seen with a
    # real Docker daemon). Each WORKDIR must be made, owned by the user, before it is entered.
    lines = [line.strip() for line in (ROOT / "docker" / name).read_text().splitlines()]
    user = next(i for i, line in enumerate(lines) if line == "USER rlt")
    for i, line in enumerate(lines):
        if line.startswith("WORKDIR "):
            folder = line.split(maxsplit=1)[1]
            owned = re.compile(rf"install -d -o rlt -g rlt .*{re.escape(folder)}\b")
            made = [before for before in lines[:i] if owned.search(before)]
            assert made, f"{name}: {folder} must be created owned by rlt before WORKDIR {folder}"
    assert all(not line.startswith("WORKDIR ") for line in lines[user:]), "WORKDIR after USER would be root's"


def test_gpu_image_matches_the_dali_wheel() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    base = re.search(r"^FROM nvidia/cuda:(\d+)\.", (ROOT / "docker" / "Dockerfile").read_text(), re.M)
    assert base, "the GPU image must build on a CUDA runtime base"
    assert f"nvidia-dali-cuda{base.group(1)}0" in pyproject


def compose(*args: str, token: str | None = "secret") -> subprocess.CompletedProcess[str]:
    if shutil.which("docker-compose") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's docker-compose (see .ci/run)")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    return subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_compose_is_valid_and_runs_the_job_against_the_head() -> None:
    result = compose("config")
    assert result.returncode == 0, result.stderr
    config = result.stdout
    assert {"ray-head:", "ray-worker:", "tokenize:"} <= set(re.findall(r"^  ([\w-]+:)$", config, re.M))
    assert "--ray-address=ray-head:6379" in config
    assert config.count("data:/data") == 3  # one volume shared by every node
    assert config.count("RAY_AUTH_TOKEN: secret") == 3
    # The dashboard is published on the host's loopback only, unless RLT_DASHBOARD_BIND opts in.
    assert re.search(r"127\.0\.0\.1:8265:8265|host_ip: 127\.0\.0\.1", config), config
    assert "0.0.0.0:8265" not in config


def test_the_ray_floor_is_the_first_release_with_token_auth() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    # Ray's docs: token authentication (RAY_AUTH_MODE=token) is available from Ray 2.52.0.
    assert '"ray[default]>=2.52"' in pyproject


def test_compose_refuses_to_start_without_a_ray_token() -> None:
    result = compose("config", token=None)
    assert result.returncode != 0
    assert "set RAY_AUTH_TOKEN" in result.stderr
