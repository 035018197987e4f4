"""A local SNS/SQS server (moto's server mode) shared by every test that needs one.

It runs in its own process on a free port of 127.0.0.1, started on first
use and stopped when the test session ends; tests talk to it with the real
boto3 client over HTTP.
"""

from __future__ import annotations

import atexit
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REGION = "us-east-1"
KEY = "testing"
SECRET = "testing"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


class MotoServer:
    """One moto_server process."""

    def __init__(self) -> None:
        executable = Path(sys.executable).with_name("moto_server")
        if not executable.exists():
            pytest.fail(f"{executable} not found: install the dev extra (pip install -e '.[dev]')")
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._log = Path(tempfile.mkdtemp(prefix="moto-")) / "moto_server.log"
        with open(self._log, "wb") as log_file:
            self._process = subprocess.Popen(
                [str(executable), "-H", "127.0.0.1", "-p", str(port)], stdout=log_file, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while not _answers(f"{self.url}/moto-api/"):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(
                    f"moto_server did not start on port {port}:\n{self._log.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.1)

    def reset(self) -> None:
        """Forget every topic, queue and message."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

    def stop(self) -> None:
        """Stop the server."""
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


_shared: MotoServer | None = None


def shared() -> MotoServer:
    """The session's server, started on first use."""
    global _shared
    if _shared is None:
        _shared = MotoServer()
        atexit.register(_shared.stop)
    return _shared


def sqs_url(endpoint: str = "", **options: object) -> str:
    """An ``sqs://`` URL on the local server; short polls and visibility suit tests."""
    settings: dict[str, object] = {"region": REGION, "endpoint": endpoint or shared().url, "wait": 1, "visibility": 10}
    settings.update(options)
    query = "&".join(f"{key}={value}" for key, value in settings.items())
    return f"sqs://{KEY}:{SECRET}@?{query}"
