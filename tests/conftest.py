from __future__ import annotations

import uuid

import pytest

from eventbus import Registry


@pytest.fixture
def registry() -> Registry:
    """A fresh registry, so that tests never see each other's declarations."""
    return Registry()


@pytest.fixture
def memory_url() -> str:
    """A memory:// URL private to the test."""
    return f"memory://{uuid.uuid4().hex}"
