"""The shop example is the project's front door: it must keep working."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_shop_demo_runs_end_to_end_in_memory() -> None:
    env = {k: v for k, v in os.environ.items() if k != "EVENTBUS_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "examples.shop"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "o-1002 cancelled (card limit exceeded)" in out
    assert "o-1003 booked with the carrier  (attempt 2)" in out
    assert "OrderPlaced from queue payments: undecodable" in out
    for row in ("orders placed    |     4", "orders shipped   |     3", "dead letters     |     1"):
        assert row in out
