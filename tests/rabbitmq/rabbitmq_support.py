"""Direct access to the RabbitMQ broker for the tests: checks go through the broker, not the bus."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pika
import pika.exceptions

BROKER_URL = os.environ.get("EVENTBUS_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl -q ARGS`` against the local node and return its output."""
    result = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr or result.stdout}")
    return result.stdout


def listing(what: str, *columns: str) -> list[dict[str, Any]]:
    """``rabbitmqctl list_<what> COLUMNS`` as a list of dicts."""
    return list(json.loads(rabbitmqctl(f"list_{what}", *columns, "--formatter", "json") or "[]"))


class Broker:
    """Direct access to the broker, to check what the bus did (never the bus's own code)."""

    def __init__(self, uid: str) -> None:
        self.uid = uid
        self.connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        self.channel = self.connection.channel()

    def _reopen(self) -> None:
        if not self.connection.is_open:
            self.connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        self.channel = self.connection.channel()

    def queue_exists(self, name: str) -> bool:
        """Passive declare: does ``name`` exist?"""
        try:
            self.channel.queue_declare(name, passive=True)
            return True
        except pika.exceptions.ChannelClosedByBroker:
            self._reopen()
            return False

    def exchange_exists(self, name: str) -> bool:
        """Passive declare: does exchange ``name`` exist?"""
        try:
            self.channel.exchange_declare(name, passive=True)
            return True
        except pika.exceptions.ChannelClosedByBroker:
            self._reopen()
            return False

    def depth(self, queue: str) -> int:
        """Messages ready in ``queue`` (not counting unacked ones)."""
        return int(self.channel.queue_declare(queue, passive=True).method.message_count)

    def consumers(self, queue: str) -> int:
        """Consumers on ``queue`` (0 if it does not exist)."""
        if not self.queue_exists(queue):
            return 0
        return int(self.channel.queue_declare(queue, passive=True).method.consumer_count)

    def get(self, queue: str) -> tuple[Any, pika.BasicProperties, bytes] | None:
        """Take one message off ``queue`` (acked), or ``None``."""
        method, properties, body = self.channel.basic_get(queue, auto_ack=True)
        return None if method is None else (method, properties, body)

    def publish_raw(self, queue: str, body: bytes, properties: pika.BasicProperties | None = None) -> None:
        """Put raw bytes on ``queue`` through the default exchange, as some other program would."""
        self.channel.basic_publish("", queue, body, properties)

    def close_connections(self, name_prefix: str) -> int:
        """Close the broker connections whose ``connection_name`` starts with ``name_prefix``: ours only."""
        closed = 0
        for line in rabbitmqctl("list_connections", "pid", "client_properties").splitlines():
            if f'{{"connection_name","{name_prefix}' in line:
                rabbitmqctl("close_connection", line.split()[0], "eventbus test: simulated connection loss")
                closed += 1
        return closed

    def cleanup(self) -> None:
        """Delete every queue and exchange whose name contains this test's uid."""
        self._reopen()
        for row in listing("queues", "name"):
            if self.uid in row["name"]:
                self.channel.queue_delete(row["name"])
        for row in listing("exchanges", "name"):
            if self.uid in row["name"]:
                self.channel.exchange_delete(row["name"])
        self.connection.close()
