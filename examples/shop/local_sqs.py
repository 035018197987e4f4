"""A local SNS/SQS server for the demo (moto's server mode), since there is no AWS here."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


class LocalSqs:
    """``moto_server`` on a free port of 127.0.0.1, for as long as the ``with`` block lasts."""

    def __enter__(self) -> str:
        executable = Path(sys.executable).with_name("moto_server")
        if not executable.exists():
            found = shutil.which("moto_server")
            if found is None:
                raise SystemExit("the sqs demo needs moto's server: pip install 'moto[server]' (just demo does)")
            executable = Path(found)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self._process = subprocess.Popen(
            [str(executable), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    raise SystemExit(f"moto_server did not start on port {port}") from None
                time.sleep(0.1)
        return f"sqs://demo:demo@?region=us-east-1&endpoint={endpoint}&wait=1&visibility=5"

    def __exit__(self, *exc: object) -> None:
        self._process.terminate()
        self._process.wait(10)
