"""The label tests' HTTP critic (tests/label/fake_critic.py) and its API key."""

from __future__ import annotations

import uuid

import pytest

from tests.label.fake_critic import FakeCritic
from tests.label.helpers import KEY_ENV


@pytest.fixture
def key(monkeypatch) -> str:
    value = f"sk-srft-test-{uuid.uuid4().hex}"
    monkeypatch.setenv(KEY_ENV, value)
    return value


@pytest.fixture
def critic_server(key):
    server = FakeCritic(key=key, max_body_mb=1.0, drip_s=0.4).start()
    yield server
    server.stop()
