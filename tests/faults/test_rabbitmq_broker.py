"""RabbitMQ going away under a running publisher and a running consumer: 0 lost."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from tests.conformance.harness import RABBITMQ_URL, rabbitmq_cleanup
from tests.faults.harness import Figures, Workers, settle, stop
from tests.rabbitmq.rabbitmq_support import Broker, rabbitmqctl


@pytest.fixture
def pool() -> Iterator[Workers]:
    made = Workers("rabbitmq", "")
    made.url = f"{RABBITMQ_URL}?connection_name={made.namespace}"
    try:
        yield made
    finally:
        made.cleanup()
        rabbitmq_cleanup(made.namespace)


def run_through(pool: Workers, total: int, fault: Callable[[], None], faults: int) -> tuple[float, float]:
    """Publish and consume ``total`` jobs while ``fault`` strikes ``faults`` times; (slowest recovery, seconds)."""
    started = time.monotonic()
    worker = pool.start()
    publisher = pool.publisher(total)
    recover_max = 0.0
    try:
        for _ in range(faults):
            pool.wait(lambda: pool.completed() > 0, 30)
            time.sleep(0.5)
            fault()
            struck, before = time.monotonic(), pool.completed()
            pool.wait(lambda b=before: pool.completed() > b or pool.completed() >= total, 90)
            recover_max = max(recover_max, time.monotonic() - struck)
        assert publisher.wait(180) == 0, "the publisher failed"
        pool.wait(lambda: pool.completed() >= total, 120)
        settle(pool)
    finally:
        if publisher.poll() is None:
            publisher.kill()
        assert stop(worker) == 0
    return recover_max, time.monotonic() - started


def test_the_broker_drops_every_connection(pool: Workers, record: Callable[..., Figures]) -> None:
    """As `rabbitmqctl close_all_connections` does, but for this test's connections only.

    Other clients may share the broker; from the bus's side the fault is the same.
    """
    broker = Broker(pool.namespace)
    recover, seconds = run_through(pool, 3000, lambda: broker.close_connections(pool.namespace), faults=3)
    figures = record(pool.figures("connections dropped", faults=3, recover_max=recover, seconds=seconds))
    print(f"publishes that raised and were retried: {pool.publish_errors()}")
    assert figures.lost == 0
    assert figures.duplicates == 0


def test_the_broker_restarts(pool: Workers, record: Callable[..., Figures]) -> None:
    """`rabbitmqctl stop_app` then `start_app`: durable queues and persistent messages survive, clients come back."""

    def restart() -> None:
        rabbitmqctl("stop_app")
        time.sleep(1)
        rabbitmqctl("start_app")
        subprocess.run(["rabbitmqctl", "-q", "await_startup", "--timeout", "60"], check=True)

    recover, seconds = run_through(pool, 2000, restart, faults=1)
    figures = record(pool.figures("broker stop_app/start_app", faults=1, recover_max=recover, seconds=seconds))
    print(f"publishes that raised and were retried: {pool.publish_errors()}")
    assert figures.lost == 0
    assert figures.duplicates == 0
