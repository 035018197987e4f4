from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rabbitmq_services import declare
from rabbitmq_support import Broker

from eventbus import Bus, Registry, wait_until

pytestmark = pytest.mark.rabbitmq

HERE = Path(__file__).parent


@pytest.fixture
def services(uid: str, amqp_url: str, broker: Broker, tmp_path: Path) -> Iterator[Path]:
    """``billing`` and ``shipping`` running in two processes; yields the file they log handled messages to."""
    output = tmp_path / "handled.jsonl"
    output.touch()
    url = amqp_url + "&retry_delays=1"
    processes = [
        subprocess.Popen([sys.executable, str(HERE / "rabbitmq_services.py"), name, url, uid, str(output)])
        for name in ("billing", "shipping")
    ]
    try:
        for name in ("billing", "shipping"):
            wait_until(lambda name=name: broker.consumers(f"{name}-{uid}"), 30, message=f"{name} consuming")
        yield output
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            assert process.wait(30) == 0


def handled(output: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.read_text().splitlines()]


def test_two_services_fan_out_filter_by_manifest_and_cascade(
    uid: str, amqp_url: str, services: Path, broker: Broker
) -> None:
    registry = Registry()
    types = declare(registry, uid)
    shop = Bus(service=f"shop-{uid}", url=amqp_url, registry=registry)  # publishes only

    placed = shop.publish(types["OrderPlaced"]("o-1"))
    cancelled = shop.publish(types["OrderCancelled"]("o-2"))

    def seen() -> set[tuple[str, str, str]]:
        lines = handled(services)
        return {(line["service"], line["manifest"], line["order_id"]) for line in lines}

    expected = {
        ("billing", "OrderPlaced", "o-1"),  # fan-out: both services get the order
        ("shipping", "OrderPlaced", "o-1"),
        ("billing", "OrderCancelled", "o-2"),  # only billing handles cancellations
        ("shipping", "PaymentCharged", "o-1"),  # published by billing's handler
    }
    wait_until(lambda: seen() == expected, 20, message="every service handled its messages")
    lines = handled(services)
    assert len(lines) == 4  # and nothing twice
    payment = next(line for line in lines if line["manifest"] == "PaymentCharged")
    assert payment["correlation_id"] == placed  # the whole flow shares the first message's id
    assert payment["causation_id"] == placed  # caused by the order
    cancellation = next(line for line in lines if line["manifest"] == "OrderCancelled")
    assert cancellation["message_id"] == cancelled
    assert broker.depth(f"shipping-{uid}") == 0
    assert broker.depth(f"billing-{uid}") == 0
    shop.stop()
