"""docker/: the images install the project the README's way; compose.yaml is a valid cluster.

With a Docker daemon running, the CPU image is built for real and runs `rlt-prep demo`. Without a
registry, RLT_PREP_DOCKER_BASE names a local base image (Debian with python3-venv, e.g. made with
debootstrap and `docker import`) and RLT_PREP_DOCKER_TORCH a CPU torch wheel for it (else the first
`torch-*+cpu-cp311-*.whl` in pip's find-links, PIP_FIND_LINKS, is taken).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERFILES = ["Dockerfile", "Dockerfile.cpu"]
# How an install step takes the CA bundle given with `--secret id=pip_cert,src=...`: the file exists
# only while that RUN runs, under a mount (nothing of it is written to a layer).
PIP_CERT_SECRET = "if [ -f /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi"


def readme_setup() -> str:
    """The set-up part of the README's main-job command: `python3 -m venv .venv && ... install -e .`."""
    readme = (ROOT / "README.md").read_text()
    demo = next(line for line in readme.splitlines() if "rlt-prep demo" in line and line.startswith("python3"))
    return demo.rsplit(" && ", 1)[0]


def instructions(name: str) -> list[str]:
    """The Dockerfile's instructions, one string each: continuation lines joined, comments dropped."""
    found, current = [], ""
    for line in (ROOT / "docker" / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
        else:
            found.append(current + line)
            current = ""
    assert not current, f"{name} ends inside a continued line"
    return found


def run_command(instruction: str) -> str:
    """The shell command of a RUN instruction, without its --mount (or other) flags."""
    words = instruction.split(" ")
    assert words[0] == "RUN"
    start = 1
    while words[start].startswith("--"):
        start += 1
    return " ".join(words[start:])


@pytest.mark.parametrize("name", DOCKERFILES)
def test_images_install_the_readme_way_as_a_user(name: str) -> None:
    text = (ROOT / "docker" / name).read_text()
    setup = readme_setup()
    commands = [run_command(i) for i in instructions(name) if i.startswith("RUN ")]
    # The README's command verbatim, with at most the CA bundle of a TLS-intercepting proxy in scope.
    assert setup in commands or f"{PIP_CERT_SECRET} && {setup}" in commands, commands
    assert re.search(r"^USER rlt$", text, re.M), "the image must not run as root"
    assert 'ENTRYPOINT ["rlt-prep"]' in text


def test_the_cpu_image_defaults_to_python_slim_and_pytorchs_cpu_index() -> None:
    # The overrides (a local base, local wheels) are for builds without a registry; a plain
    # `docker build` still takes the public images and PyTorch's CPU build.
    found = instructions("Dockerfile.cpu")
    assert "ARG BASE=python:3.11-slim" in found
    assert "ARG WHEELS=scratch" in found
    assert 'ARG TORCH="torch --index-url https://download.pytorch.org/whl/cpu"' in found
    assert found.index("FROM ${BASE}") > found.index("FROM ${WHEELS} AS wheels")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_no_layer_holds_a_certificate(name: str) -> None:
    # A proxy's CA bundle comes in as a BuildKit secret, mounted for the RUN steps that install: a
    # COPY, ADD or ENV of it would keep it (or a path to a file that is not there) in the image.
    found = instructions(name)
    uid = re.search(r"useradd .*--uid (\d+) rlt", " ".join(found))
    assert uid, "the user's uid must be fixed, for the secret's owner"
    mount = f"--mount=type=secret,id=pip_cert,uid={uid.group(1)}"
    pip_runs = 0
    for instruction in found:
        keyword = instruction.split(" ", 1)[0]
        if keyword in ("COPY", "ADD"):
            assert not re.search(r"cert|\.crt\b|\.pem\b|secret", instruction, re.I), instruction
        if keyword == "ENV":
            assert not re.search(r"CERT|CA_BUNDLE", instruction), instruction
        # /run/secrets is named only by the one line that points pip at the mounted file.
        if "/run/secrets" in instruction or "PIP_CERT" in instruction:
            assert keyword == "RUN" and mount in instruction, instruction
            assert "secrets" not in run_command(instruction).replace(PIP_CERT_SECRET, ""), instruction
        if keyword == "RUN" and "pip install" in instruction:
            pip_runs += 1
            assert mount in instruction and run_command(instruction).startswith(f"{PIP_CERT_SECRET} && ")
    assert pip_runs


@pytest.mark.parametrize("name", DOCKERFILES)
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
    found = instructions("Dockerfile")
    assert "FROM ${BASE}" in found
    base = next((re.match(r"ARG BASE=nvidia/cuda:(\d+)\.", i) for i in found if i.startswith("ARG BASE=")), None)
    assert base, "the GPU image must build on a CUDA runtime base"
    assert f"nvidia-dali-cuda{base.group(1)}0" in pyproject


def compose(
    *args: str, token: str | None = "secret", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    if shutil.which("docker-compose") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's docker-compose (see .ci/run)")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    environment = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"} | (env or {})
    if token is not None:
        environment["RAY_AUTH_TOKEN"] = token
    return subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), *args], capture_output=True, text=True, env=environment, timeout=60
    )


def test_compose_is_valid_and_runs_the_job_against_the_head() -> None:
    result = compose("config")
    assert result.returncode == 0, result.stderr
    config = result.stdout
    assert {"ray-head:", "ray-worker:", "tokenize:", "serve:"} <= set(re.findall(r"^  ([\w-]+:)$", config, re.M))
    assert "--ray-address=ray-head:6379" in config
    assert config.count("data:/data") == 4  # one volume shared by every node, and the service
    assert config.count("RAY_AUTH_TOKEN: secret") == 4
    # The dashboard is published on the host's loopback only, unless RLT_DASHBOARD_BIND opts in.
    assert re.search(r"127\.0\.0\.1:8265:8265|host_ip: 127\.0\.0\.1", config), config
    assert "0.0.0.0:8265" not in config


def test_compose_runs_the_service_watching_the_shared_volume_on_loopback() -> None:
    import yaml

    result = compose("--profile", "serve", "config", env={"RLT_SERVE_TOKEN": "tok"})
    assert result.returncode == 0, result.stderr
    serve = yaml.safe_load(result.stdout)["services"]["serve"]
    assert serve["command"][:2] == ["serve", "/data/dataset"] and "--watch=/data/incoming" in serve["command"]
    assert "--host=0.0.0.0" in serve["command"] and serve["environment"]["RLT_PREP_SERVE_TOKEN"] == "tok"
    # Published on the host's loopback only, unless RLT_SERVE_BIND opts in to the network.
    assert [(p["host_ip"], p["published"], p["target"]) for p in _ports(serve)] == [("127.0.0.1", 8000, 8000)]
    assert "/healthz" in " ".join(serve["healthcheck"]["test"])
    # Docker's grace period outlasts the drain that SIGTERM starts: the shards', then the requests'.
    drain = float(next(c.split("=")[1] for c in serve["command"] if c.startswith("--drain=")))
    assert _seconds(serve["stop_grace_period"]) > 2 * drain
    assert serve["profiles"] == ["serve"]  # `up` alone runs the cluster recipe, not the service


def _ports(service: dict[str, Any]) -> list[dict[str, Any]]:
    """docker-compose 1.x prints "127.0.0.1:8000:8000/tcp"; 2.x a mapping."""
    ports = []
    for port in service["ports"]:
        if isinstance(port, str):
            host_ip, published, target = port.split("/")[0].split(":")
            port = {"host_ip": host_ip, "published": published, "target": target}
        ports.append({"host_ip": port["host_ip"], "published": int(port["published"]), "target": int(port["target"])})
    return ports


def _seconds(duration: str) -> float:
    """A compose duration ("1m", "60s", "1m30s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)([hms])", duration))


def test_the_ray_floor_is_the_first_release_with_token_auth() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    # Ray's docs: token authentication (RAY_AUTH_MODE=token) is available from Ray 2.52.0.
    assert '"ray[default,serve]>=2.52"' in pyproject


def test_compose_refuses_to_start_without_a_ray_token() -> None:
    result = compose("config", token=None)
    assert result.returncode != 0
    assert "set RAY_AUTH_TOKEN" in result.stderr


def docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def buildkit_build() -> list[str]:
    """A command that builds with BuildKit (the images' RUN --mount needs it), or skips the test.

    `docker buildx build --load` where the buildx plugin is installed; else a docker CLI older than
    23 (Debian 12's docker.io), whose own BuildKit client DOCKER_BUILDKIT=1 turns on.
    """
    if docker("buildx", "version").returncode == 0:
        return ["docker", "buildx", "build", "--load"]
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        cli = Path(folder) / "docker"
        if not (cli.is_file() and os.access(cli, os.X_OK)):
            continue
        version = subprocess.run([cli, "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True)
        major = re.match(r"(\d+)\.", version.stdout.strip())
        if major and int(major.group(1)) < 23:
            return [str(cli), "build"]
    pytest.skip("no BuildKit client: install the docker buildx plugin (Debian: docker-buildx, from trixie on)")


def local_torch_wheel() -> Path | None:
    """RLT_PREP_DOCKER_TORCH, else a CPU torch wheel for the image's Python 3.11 in pip's find-links."""
    if os.environ.get("RLT_PREP_DOCKER_TORCH"):
        return Path(os.environ["RLT_PREP_DOCKER_TORCH"])
    if platform.machine() != "x86_64":
        return None
    for folder in os.environ.get("PIP_FIND_LINKS", "").split():
        wheels = sorted(Path(folder).glob("torch-*+cpu-cp311-cp311-manylinux*_x86_64.whl"))
        if wheels:
            return wheels[-1]
    return None


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_cpu_image_builds_runs_the_demo_and_serves(tmp_path: Path) -> None:
    if shutil.which("docker") is None or docker("info").returncode != 0:
        pytest.skip("no Docker daemon (docker info fails)")
    build = buildkit_build()
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    args = ["-f", str(ROOT / "docker" / "Dockerfile.cpu"), "-t", "rlt-prep:cpu-test", "--progress=plain"]
    if os.environ.get("RLT_PREP_DOCKER_BASE"):
        args += ["--build-arg", f"BASE={os.environ['RLT_PREP_DOCKER_BASE']}"]
    # The build's pip trusts what the host's pip trusts: the CA bundle goes in as a build secret.
    cert = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    if cert and Path(cert).is_file():
        args += ["--secret", f"id=pip_cert,src={cert}"]
    wheel = local_torch_wheel()
    if wheel is not None:
        # The wheel reaches the build as an image of its own, mounted at /wheels (see Dockerfile.cpu).
        context = tmp_path / "wheels"
        context.mkdir()
        try:
            os.link(wheel, context / wheel.name)
        except OSError:
            shutil.copy(wheel, context / wheel.name)
        (context / "Dockerfile").write_text(f"FROM scratch\nCOPY {wheel.name} /\n")
        made = subprocess.run(
            [*build, "-t", "rlt-prep-wheels:test", str(context)], capture_output=True, text=True, env=env, timeout=600
        )
        assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
        args += ["--build-arg", "WHEELS=rlt-prep-wheels:test", "--build-arg", f"TORCH=/wheels/{wheel.name}"]

    built = subprocess.run([*build, *args, str(ROOT)], capture_output=True, text=True, env=env, timeout=2400)
    assert built.returncode == 0, built.stdout[-5000:] + built.stderr[-5000:]

    # Ray's object store lives in /dev/shm (compose.yaml gives the nodes 2 GB too).
    demo = docker("run", "--rm", "--shm-size=2g", "rlt-prep:cpu-test", "demo", timeout=900)
    assert demo.returncode == 0, demo.stdout[-5000:] + demo.stderr[-5000:]
    assert "read back with rlt.open_dataset: 16 clips, checksums verified" in demo.stdout
    assert "eval on the training clips" in demo.stdout
    assert re.search(r"done in [\d.]+s", demo.stdout.strip().splitlines()[-1]), demo.stdout[-2000:]

    # The service as compose.yaml runs it: watching a folder of the volume, on 0.0.0.0 inside the
    # container with a token, published on loopback; `docker stop` (SIGTERM) drains and exits 0.
    from rlt.dataset import read_index
    from rlt.samples import make_samples
    from tests.test_serve import _free_port

    data = tmp_path / "data"
    make_samples(data / "incoming" / "cat", num_videos=2, num_frames=16, height=64, width=96)
    (data / "incoming" / "cat" / "manifest.csv").unlink()
    for path in [data, *data.rglob("*")]:
        path.chmod(0o777)  # the image's user (uid 1000) writes the dataset there
    port, name = _free_port(), f"rlt-prep-serve-test-{os.getpid()}"
    options = ["--num-frames=8", "--frame-interval=2", "--size=64", "--poll=0.5", "--drain=45"]
    started = docker(
        "run", "-d", "--name", name, "--shm-size=2g", "-v", f"{data}:/data", "-p", f"127.0.0.1:{port}:8000",
        "-e", "RLT_PREP_SERVE_TOKEN=tok", "rlt-prep:cpu-test",
        "serve", "/data/dataset", "--watch=/data/incoming", "--host=0.0.0.0", "--port=8000", *options,
        timeout=900,  # the vfs storage driver copies the image's files into every new container
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        deadline, status = time.monotonic() + 300, None
        while time.monotonic() < deadline and not (status and status["watch"] and status["watch"]["videos_done"] == 2):
            time.sleep(1)
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/status", headers={"Authorization": "Bearer tok"}
            )
            try:
                status = json.loads(urllib.request.urlopen(request, timeout=5).read())
            except (OSError, ValueError):
                status = None
        assert status and status["watch"]["generation"] >= 1, docker("logs", name).stdout[-3000:]
        stopped = docker("stop", "-t", "60", name, timeout=90)
        assert stopped.returncode == 0, stopped.stderr
        code = docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()
        logs = docker("logs", name)
        assert code == "0", logs.stdout[-3000:] + logs.stderr[-3000:]
        assert "draining" in logs.stdout + logs.stderr
    finally:
        docker("rm", "-f", name)
    index = read_index(data / "dataset")
    assert index.totals.videos == 2 and index.classes == ("cat",)
