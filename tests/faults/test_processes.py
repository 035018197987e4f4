"""Worker processes killed or stopped under load: nothing lost, nothing handled twice."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import attrs
import pytest

from tests import moto_server
from tests.conformance.harness import RABBITMQ_URL, rabbitmq_cleanup, sqs_cleanup
from tests.faults.harness import STATE_URL, Figures, Workers, interrupt_until_drained, stop


@attrs.frozen
class FaultBackend:
    """How the fault cases run on one backend."""

    url: Callable[[str], str]
    messages: int
    every: tuple[float, float]  # seconds between faults
    cleanup: Callable[[str], None] = lambda namespace: None


BACKENDS: dict[str, FaultBackend] = {
    "rabbitmq": FaultBackend(lambda ns: f"{RABBITMQ_URL}?connection_name={ns}", 5000, (0.3, 1.2), rabbitmq_cleanup),
    "redis": FaultBackend(lambda ns: f"{STATE_URL}?prefix={ns}:q:&reclaim=2&block=0.2", 5000, (0.3, 1.2)),
    # The local SNS/SQS server slows down as a queue grows: 500 messages.
    "sqs": FaultBackend(
        lambda ns: moto_server.sqs_url(visibility=2, wait=1, max_receives=100), 500, (0.5, 1.5), sqs_cleanup
    ),
}


@pytest.fixture(params=sorted(BACKENDS))
def workers(request: pytest.FixtureRequest) -> Iterator[tuple[Workers, int, tuple[float, float]]]:
    backend = BACKENDS[request.param]
    made = Workers(request.param, "")
    made.url = backend.url(made.namespace)
    try:
        yield made, backend.messages, backend.every
    finally:
        made.cleanup()
        backend.cleanup(made.namespace)


def test_sigkill_at_random_moments(
    workers: tuple[Workers, int, tuple[float, float]], record: Callable[..., Figures]
) -> None:
    pool, total, every = workers
    pool.publish(total)
    faults, recover, seconds = interrupt_until_drained(pool, total, sig=signal.SIGKILL, every=every, deadline=240)
    figures = record(pool.figures("SIGKILL under load", faults=faults, recover_max=recover, seconds=seconds))
    assert figures.sent == total
    assert figures.lost == 0
    assert figures.duplicates == 0
    assert faults > 0


def test_sigterm_under_load_then_restart(
    workers: tuple[Workers, int, tuple[float, float]], record: Callable[..., Figures]
) -> None:
    pool, total, _ = workers
    total = total // 5
    pool.publish(total)
    proc = pool.start()
    pool.wait(lambda: pool.completed() >= total // 4, 60)
    assert stop(proc) == 0  # a clean exit, in time
    stopped_at = pool.completed()
    assert stopped_at < total, "the worker finished before it could be stopped: publish more"
    faults, recover, seconds = interrupt_until_drained(pool, total, sig=signal.SIGTERM, every=(0.5, 1.0), deadline=120)
    figures = record(pool.figures("SIGTERM, then restarts", faults=faults + 1, recover_max=recover, seconds=seconds))
    assert figures.lost == 0
    assert figures.duplicates == 0
    assert figures.reruns == 0  # a clean stop never cuts a handler short
