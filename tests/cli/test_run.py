"""``eventbus run``: workers in the foreground through the console script, stopped by a signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from eventbus import wait_until
from eventbus.cli import EXIT_USAGE

if TYPE_CHECKING:
    from conftest import App

Cli = Callable[..., tuple[int, str, str]]


class Process:
    """A child process whose stderr lines are collected as they come."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "EVENTBUS_URL"}
        self.popen = subprocess.Popen(args, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.lines.append(line.rstrip("\n"))

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def log(self) -> str:
        return "\n".join(self.lines)

    def finish(self, timeout: float = 30) -> int:
        code = self.popen.wait(timeout)
        self._reader.join(5)
        return code


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        if process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait(10)


@pytest.mark.redis
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_through_the_console_script_until_a_signal(
    make_app: Callable[..., App],
    workdir: Path,
    redis_url: str,
    redis_prefix: str,
    processes: list[Process],
    signum: signal.Signals,
) -> None:
    app = make_app(f"{redis_url}?prefix={redis_prefix}&reclaim=1&block=0.2")
    script = Path(sys.executable).with_name("eventbus")
    worker = Process([str(script), "run", app.target, "--concurrency", "3", "-v"], workdir)
    processes.append(worker)
    wait_until(lambda: worker.saw("consuming payments"), timeout=30, message=f"the worker to start:\n{worker.log()}")
    assert worker.saw(f"payments on {redis_url}?prefix={redis_prefix}&reclaim=1&block=0.2, 3 thread(s) per queue")
    assert worker.saw("eventbus.cli:   queue payments -> dead letters payments-dlq")
    assert worker.saw("eventbus.cli:   orders -> payments [OrderPlaced]")

    module = app.module  # the same app, imported here to publish
    module.failing["on"] = True
    paid = module.bus.publish(module.PaymentTaken("p-1"))
    wait_until(lambda: worker.saw(f"audit PaymentTaken {paid} attempt 1: dead-letter (handler-failed)"), timeout=30)
    placed = module.bus.publish(module.OrderPlaced("o-1", 100))
    wait_until(lambda: worker.saw(f"payments OrderPlaced {placed} attempt 1: retry in"), timeout=30)
    wait_until(lambda: worker.saw(f"payments OrderPlaced {placed} attempt 2: dead-letter"), timeout=30)
    assert {letter.message_id for letter in module.bus.dead_letters()} == {paid, placed}

    worker.popen.send_signal(signum)
    assert worker.finish() == 0, worker.log()
    assert worker.saw(f"signal {int(signum)} received, stopping")
    assert worker.lines[-1].endswith("eventbus.cli: payments stopped")


def test_run_without_handlers_is_a_usage_error(cli: Cli, workdir: Path) -> None:
    (workdir / "idle_app.py").write_text("from eventbus import Bus, Registry\nbus = Bus('idle', registry=Registry())\n")
    code, _, err = cli("run", "idle_app:bus")
    assert code == EXIT_USAGE
    assert "service 'idle' has no handlers: nothing to run" in err
