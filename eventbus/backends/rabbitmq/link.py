"""One AMQP connection owned by one I/O thread, reopened with backoff when lost.

pika connections are not thread-safe, so every call on a connection or its
channels happens on the thread that runs its event loop. Other threads hand
work to it with :meth:`Link.call`. Clients (the publisher, the consumers)
are told on that thread when the connection opens and when it is lost, and
open their channels again by themselves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from pika.adapters.select_connection import IOLoop, SelectConnection

from eventbus.backends import redact_url
from eventbus.backends.rabbitmq.options import Options

log = logging.getLogger("eventbus.rabbitmq")

#: Reconnection backoff: 0.1s, doubling, at most 10s between attempts.
_FIRST_BACKOFF = 0.1
_MAX_BACKOFF = 10.0


class Client(Protocol):
    """Something that uses a link's connection; both methods run on the I/O thread."""

    def connected(self, connection: SelectConnection) -> None:
        """The connection is open (for the first time or again): open channels."""
        ...

    def disconnected(self, reason: str) -> None:
        """The connection is gone; every channel on it is gone too."""
        ...


class Link:
    """An AMQP connection on its own thread, started on first use and kept open until :meth:`close`."""

    def __init__(self, options: Options, role: str) -> None:
        self._options = options
        self.role = role
        self._lock = threading.Lock()  # starting and stopping the thread
        self._clients_lock = threading.Lock()
        self._clients: list[Client] = []
        self._ioloop: IOLoop | None = None
        self._thread: threading.Thread | None = None
        # Touched on the I/O thread only.
        self._connection: SelectConnection | None = None
        self._closing = False
        self._failures = 0
        #: Why the connection is down, while it is (read from any thread, for error messages).
        self.down_because: str | None = None
        # Whether the connection is open, for callers waiting on other threads.
        self._state = threading.Condition()
        self._up = False
        self._ever_up = False
        self._refused = False

    @property
    def connection(self) -> SelectConnection | None:
        """The open connection, or ``None`` (read on the I/O thread only)."""
        connection = self._connection
        return connection if connection is not None and connection.is_open else None

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` was called on the running thread (read on the I/O thread)."""
        return self._closing

    def call(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the I/O thread soon, starting the thread and connecting if needed."""
        with self._lock:
            ioloop = self._ioloop if self._ioloop is not None else self._start()
        ioloop.add_callback_threadsafe(fn)

    def call_later(self, delay: float, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the I/O thread after ``delay`` seconds (call it on the I/O thread)."""
        if self._ioloop is not None:
            self._ioloop.call_later(delay, fn)

    def wait_up(self, timeout: float) -> bool:
        """Wait until the connection is open; ``False`` after ``timeout`` or once a first connection is refused.

        A link that never connected gives up at its first failure (the broker
        is unreachable: say so now); one that was up and is reconnecting gets
        the whole ``timeout`` to come back.
        """
        with self._lock:
            if self._ioloop is None:
                self._start()
        with self._state:
            self._state.wait_for(lambda: self._up or (self._refused and not self._ever_up), timeout)
            return self._up

    def attach(self, client: Client) -> None:
        """Tell ``client`` about this connection from now on (at once if it is open)."""
        with self._clients_lock:
            self._clients.append(client)
        self.call(lambda: self._introduce(client))

    def detach(self, client: Client) -> None:
        """Stop telling ``client`` about this connection."""
        with self._clients_lock:
            if client in self._clients:
                self._clients.remove(client)

    def close(self, timeout: float = 10.0) -> None:
        """Close the connection and stop the thread; a later :meth:`call` starts afresh.

        Calls made meanwhile from other threads wait until the old thread is gone,
        so two threads never serve the same clients.
        """
        with self._lock:
            thread, ioloop = self._thread, self._ioloop
            self._thread = self._ioloop = None
            if thread is None or ioloop is None:
                return
            ioloop.add_callback_threadsafe(lambda: self._shutdown(ioloop))
            thread.join(timeout)
        if thread.is_alive():
            log.warning("the %s connection thread did not stop within %.1fs", self.role, timeout)

    # -- on the I/O thread ------------------------------------------------------

    def _start(self) -> IOLoop:
        with self._state:
            self._up = self._ever_up = self._refused = False
        ioloop = self._ioloop = IOLoop()
        self._thread = threading.Thread(
            target=self._run, args=(ioloop,), name=f"eventbus-amqp-{self.role}", daemon=True
        )
        self._thread.start()
        return ioloop

    def _run(self, ioloop: IOLoop) -> None:
        self._closing = False
        self._failures = 0
        try:
            self._connect(ioloop)
            ioloop.start()
        except Exception:
            log.exception("the %s connection thread crashed", self.role)
        finally:
            ioloop.close()

    def _connect(self, ioloop: IOLoop) -> None:
        if self._closing:
            ioloop.stop()
            return
        self._connection = SelectConnection(
            self._options.connection_parameters(self.role),
            on_open_callback=self._on_open,
            on_open_error_callback=lambda connection, error: self._on_lost(ioloop, error),
            on_close_callback=lambda connection, reason: self._on_lost(ioloop, reason),
            custom_ioloop=ioloop,
        )

    def _clients_now(self) -> list[Client]:
        with self._clients_lock:
            return list(self._clients)

    def _introduce(self, client: Client) -> None:
        if self.connection is not None:
            self._notify(client.connected, self._connection)

    def _on_open(self, connection: SelectConnection) -> None:
        if self._failures:
            log.info("reconnected to %s (%s)", redact_url(self._options.url), self.role)
        self._failures = 0
        self.down_because = None
        with self._state:
            self._up = self._ever_up = True
            self._state.notify_all()
        for client in self._clients_now():
            self._notify(client.connected, connection)

    def _on_lost(self, ioloop: IOLoop, reason: BaseException | str) -> None:
        self._connection = None
        self.down_because = f"{reason!r}"
        with self._state:
            self._up = False
            self._refused = True
            self._state.notify_all()
        for client in self._clients_now():
            self._notify(client.disconnected, str(reason) or type(reason).__name__)
        if self._closing:
            ioloop.stop()
            return
        delay = min(_FIRST_BACKOFF * 2**self._failures, _MAX_BACKOFF)
        self._failures += 1
        log.warning(
            "%s connection to %s lost or refused (%r); reconnecting in %.1fs",
            self.role,
            redact_url(self._options.url),
            reason,
            delay,
        )
        ioloop.call_later(delay, lambda: self._connect(ioloop))

    def _shutdown(self, ioloop: IOLoop) -> None:
        self._closing = True
        connection = self._connection
        if connection is not None and not (connection.is_closing or connection.is_closed):
            try:
                connection.close()
                return  # _on_lost stops the loop once the broker answered
            except Exception:
                log.debug("closing the %s connection failed", self.role, exc_info=True)
        for client in self._clients_now():
            self._notify(client.disconnected, "the backend was closed")
        ioloop.stop()

    def _notify(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("AMQP client callback %r failed", fn)
