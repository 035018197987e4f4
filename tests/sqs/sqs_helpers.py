"""Helpers for the sqs:// tests: looking at queues with a plain boto3 client."""

from __future__ import annotations

import contextlib
import socket
import threading
from types import SimpleNamespace
from typing import Any

import attrs

from eventbus import Registry


def queue_url(sqs: Any, name: str) -> str:
    """The URL of the physical queue ``name``."""
    return str(sqs.get_queue_url(QueueName=name)["QueueUrl"])


def queue_counts(sqs: Any, name: str) -> tuple[int, int]:
    """(visible, in flight) messages of queue ``name``."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url(sqs, name),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


def receive_all(sqs: Any, name: str, *, wait: int = 1) -> list[dict[str, Any]]:
    """Receive and delete every message now in queue ``name``."""
    url = queue_url(sqs, name)
    messages: list[dict[str, Any]] = []
    while True:
        response = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
        )
        batch = response.get("Messages", [])
        if not batch:
            return messages
        messages += batch
        sqs.delete_message_batch(
            QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)]
        )
        wait = 0


class Proxy:
    """A TCP proxy to the local server that can be cut and restored, to play a lost connection."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        """Accept connections again."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and cut the open ones."""
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut while connecting
                    client.close()
                    server.close()
                    continue
                self._sockets |= {client, server}
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                target.shutdown(socket.SHUT_WR)


def declare_shop(registry: Registry) -> SimpleNamespace:
    """The message types these tests share: two on ``orders``, one on ``payments``, one on FIFO ``audit.fifo``."""

    @registry.message(topic="orders")
    @attrs.frozen
    class OrderPlaced:
        order_id: str

    @registry.message(topic="orders")
    @attrs.frozen
    class OrderCancelled:
        order_id: str

    @registry.message(topic="payments")
    @attrs.frozen
    class PaymentFailed:
        order_id: str

    @registry.message(topic="audit.fifo", group_by="order_id")
    @attrs.frozen
    class Audited:
        order_id: str

    return SimpleNamespace(
        OrderPlaced=OrderPlaced, OrderCancelled=OrderCancelled, PaymentFailed=PaymentFailed, Audited=Audited
    )
