"""The shop example is the project's front door: it must keep working."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("backend", ["memory", "rabbitmq", "redis", "sqs"])
def test_shop_demo_runs_end_to_end(backend: str) -> None:
    """memory: threads in one process; the others: three service processes, same story."""
    env = {k: v for k, v in os.environ.items() if k != "EVENTBUS_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "examples.shop", backend], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert ("three processes" in out) is (backend != "memory")
    assert "o-1002 cancelled (card limit exceeded)" in out
    assert "o-1002 closed: cancelled" in out
    assert "o-1003 booked with the carrier  (attempt 2)" in out
    assert "OrderPlaced from queue payments: undecodable" in out
    for row in ("orders placed    |     4", "orders shipped   |     3", "dead letters     |     1"):
        assert row in out
