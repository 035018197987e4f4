"""A redis-server of the test's own, to stop and restart without disturbing anyone else."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest
import redis


class PrivateRedis:
    """A redis-server of our own on a free port, to stop and restart without disturbing anyone."""

    def __init__(self, data_dir: str | None = None) -> None:
        self.data_dir = data_dir  # given: an append-only file there, fsynced on every write, survives restarts
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            pytest.fail("redis-server is not installed; the restart tests need it to run a private instance")
        persistence = ["--appendonly", "no"]
        if self.data_dir is not None:
            persistence = ["--appendonly", "yes", "--appendfsync", "always", "--dir", self.data_dir]
        self._process = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        probe = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    pytest.fail(f"private redis-server on port {self.port} did not start")
                time.sleep(0.05)
            finally:
                probe.close()

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            self._process = None
