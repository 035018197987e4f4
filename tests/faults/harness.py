"""Driving worker processes through faults, and counting what happened."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import attrs
import redis

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("worker.py")
STATE_URL = os.environ.get("EVENTBUS_REDIS_URL", "redis://127.0.0.1:6379/0")


@attrs.define
class Figures:
    """What one fault case measured."""

    backend: str
    case: str
    sent: int = 0
    handled: int = 0
    lost: int = 0
    duplicates: int = 0
    reruns: int = 0
    faults: int = 0
    recover_max: float = 0.0
    seconds: float = 0.0

    def row(self) -> str:
        return (
            f"{self.backend:<9} {self.case:<26} {self.sent:>6} {self.handled:>7} {self.lost:>5} "
            f"{self.duplicates:>5} {self.reruns:>6} {self.faults:>6} {self.recover_max:>8.2f} {self.seconds:>7.1f}"
        )

    HEADER = (
        f"{'backend':<9} {'case':<26} {'sent':>6} {'handled':>7} {'lost':>5} {'dups':>5} "
        f"{'reruns':>6} {'faults':>6} {'recover':>8} {'seconds':>7}"
    )


@attrs.define
class Workers:
    """Worker processes of one fault case, on one backend."""

    backend: str
    url: str
    lease: float = 2.0
    dedup_url: str = ""
    namespace: str = attrs.field(factory=lambda: "f" + uuid.uuid4().hex[:10])
    state: redis.Redis = attrs.field(factory=lambda: redis.Redis.from_url(STATE_URL))  # type: ignore[type-arg]

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "EVENTBUS_URL": self.url,
            "FAULT_NAMESPACE": self.namespace,
            "FAULT_STATE": STATE_URL,
            "FAULT_LEASE": str(self.lease),
            "FAULT_DEDUP": self.dedup_url,
        }

    def publish(self, total: int) -> None:
        subprocess.run([sys.executable, str(WORKER), "publish", str(total)], env=self.env, check=True, timeout=300)

    def publisher(self, total: int) -> subprocess.Popen[str]:
        """A process publishing ``total`` jobs one by one, retrying through faults."""
        return subprocess.Popen([sys.executable, str(WORKER), "publish-steadily", str(total)], env=self.env, text=True)

    def publish_errors(self) -> int:
        return int(self.state.get(f"{self.namespace}:publish_errors") or 0)

    def start(self) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, str(WORKER)], env=self.env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            raise RuntimeError(f"worker did not start: {line!r}")
        return proc

    def completed(self) -> int:
        """Messages whose handler ran to its end at least once."""
        return int(self.state.hlen(f"{self.namespace}:runs"))

    def wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.05)
        return condition()

    def figures(self, case: str, *, faults: int, recover_max: float, seconds: float) -> Figures:
        sent = {m.decode() for m in self.state.smembers(f"{self.namespace}:sent")}
        completions = {k.decode(): int(v) for k, v in self.state.hgetall(f"{self.namespace}:completions").items()}
        runs = {k.decode(): int(v) for k, v in self.state.hgetall(f"{self.namespace}:runs").items()}
        return Figures(
            backend=self.backend,
            case=case,
            sent=len(sent),
            handled=len(sent & runs.keys()),
            lost=len(sent - runs.keys()),
            duplicates=sum(1 for count in completions.values() if count > 1),
            reruns=sum(count - 1 for count in runs.values() if count > 1),
            faults=faults,
            recover_max=recover_max,
            seconds=seconds,
        )

    def cleanup(self) -> None:
        keys = list(self.state.scan_iter(match=f"{self.namespace}:*", count=1000))
        if keys:
            self.state.delete(*keys)


def stop(proc: subprocess.Popen[str], timeout: float = 30) -> int:
    """SIGTERM a worker and wait for it to exit; its exit code."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"worker {proc.pid} ignored SIGTERM for {timeout}s") from None


def interrupt_until_drained(
    workers: Workers, total: int, *, sig: signal.Signals, every: tuple[float, float], deadline: float
) -> tuple[int, float, float]:
    """Run a worker, hit it with ``sig`` at random moments and restart it, until every job completed.

    Returns (faults, slowest recovery in seconds, elapsed seconds).
    """
    started = time.monotonic()
    proc = workers.start()
    faults, recover_max = 0, 0.0
    try:
        while workers.completed() < total and time.monotonic() - started < deadline:
            time.sleep(random.uniform(*every))
            if workers.completed() >= total:
                break
            proc.send_signal(sig)
            proc.wait(60)
            faults += 1
            before = workers.completed()
            restarted = time.monotonic()
            proc = workers.start()
            workers.wait(lambda b=before: workers.completed() > b or workers.completed() >= total, 60)
            recover_max = max(recover_max, time.monotonic() - restarted)
        workers.wait(lambda: workers.completed() >= total, max(deadline - (time.monotonic() - started), 0))
        settle(workers)
    finally:
        stop(proc)
    return faults, recover_max, time.monotonic() - started


def settle(workers: Workers) -> None:
    """After the last job ran, leave time for what a fault left pending to come back.

    Leases expire and pending entries are reclaimed within a few seconds; a
    message handled twice would show up as a second completion in that window.
    """
    time.sleep(workers.lease + 3)
