"""Shared fixtures: real components at tiny scale (Ray, a moto S3 server, small real models)."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE = REPO / "conf" / "sample"
MODEL_CACHE = REPO / ".cache" / "models"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"real trajectories not found at {SHARED_DATA} (a clone without ../shared)")
    return SHARED_DATA


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto_server() -> tuple[subprocess.Popen, str]:
    """A moto S3 server on a free loopback port, once it answers; returns (process, endpoint URL)."""
    port = _free_port()
    proc = subprocess.Popen(
        [str(Path(os.sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            return proc, endpoint
        except (OSError, http.client.HTTPException):  # refused, reset or half up: not up yet
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.2)


@pytest.fixture(scope="session")
def moto_s3():
    """A real S3 endpoint on loopback. Sets the standard AWS environment for this process and
    for Ray workers started after it (ray_session depends on this fixture for that reason)."""
    proc, endpoint = start_moto_server()
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret",
        "AWS_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def make_bucket(moto_endpoint: str) -> str:
    """A fresh bucket on the moto server; returns its s3:// URI."""
    import uuid

    import pyarrow.fs as pafs

    name = f"srft-{uuid.uuid4().hex[:10]}"
    fs = pafs.S3FileSystem(endpoint_override=moto_endpoint.split("://")[1], scheme="http", region="us-east-1",
                           allow_bucket_creation=True)
    fs.create_dir(name)
    return f"s3://{name}"


@pytest.fixture
def s3_bucket(moto_s3) -> str:
    return make_bucket(moto_s3)


@pytest.fixture(scope="session")
def ray_session(moto_s3):
    """One local Ray for the test session, its files under a short temp dir (socket paths are
    limited to 107 characters)."""
    import ray

    from pipeline.runtime import init_ray

    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    os.environ["SRFT_RAY_TMPDIR"] = tmp
    os.environ.pop("RAY_ADDRESS", None)
    init_ray()
    yield
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def qwen_tokenizer_path(tmp_path_factory) -> Path:
    from pipeline.models import qwen_tokenizer

    return qwen_tokenizer(tmp_path_factory.mktemp("qwen-tokenizer"))


@pytest.fixture(scope="session")
def tiny_qwen2_path(tmp_path_factory) -> Path:
    from pipeline.models import tiny_qwen2

    return tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2") / "model")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct, converted once and cached under .cache/ (slow tests only)."""
    from pipeline.models import smollm2_135m

    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    return smollm2_135m(MODEL_CACHE / "smollm2-135m-instruct")
