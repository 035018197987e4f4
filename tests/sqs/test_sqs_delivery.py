"""Delivery promises on SNS/SQS: fan-out, FIFO order, retries, dead letters, visibility, stopping."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from sqs_helpers import queue_counts, queue_url, receive_all

from eventbus import Backoff, Bus, Registry, wait_until
from eventbus import envelope as h

pytestmark = pytest.mark.sqs


@attrs.frozen
class Placed:
    order_id: str


@attrs.frozen
class Shipped:
    order_id: str


@attrs.frozen
class Noted:
    order_id: str


def _declare(registry: Registry, topic: str = "orders") -> None:
    for cls in (Placed, Shipped, Noted):
        registry.message(topic=topic)(_twin(cls))


def _twin(cls: type[Any]) -> type[Any]:
    """A fresh copy of a message class, so that each test declares its own."""
    return attrs.make_class(cls.__name__, {a.name: attrs.field() for a in attrs.fields(cls)}, frozen=True)


def _types(registry: Registry) -> dict[str, type[Any]]:
    return {spec.name: spec.cls for spec in registry.messages()}


def test_fan_out_to_two_services_with_filtering(make_bus: Callable[..., Bus], prefix: str, sqs: Any) -> None:
    registry = Registry()
    _declare(registry)
    types = _types(registry)
    got: dict[str, list[Any]] = {"billing": [], "shipping": []}

    @registry.subscribe(types["Placed"])  # billing handles Placed only
    def bill(event: Any) -> None:
        got["billing"].append(event)

    shipping_registry = Registry()  # another service, with its own copy of the declarations
    _declare(shipping_registry)
    shipping_types = _types(shipping_registry)

    @shipping_registry.subscribe(shipping_types["Placed"], shipping_types["Shipped"])
    def ship(event: Any) -> None:
        got["shipping"].append(event)

    billing = make_bus("billing", registry).start()
    make_bus("shipping", shipping_registry).start()
    billing.publish_many([types["Placed"]("o-1"), types["Shipped"]("o-1"), types["Noted"]("o-1")])
    billing.publish(types["Placed"]("o-2"))

    wait_until(lambda: len(got["billing"]) == 2 and len(got["shipping"]) == 3, 20)
    assert sorted(type(e).__name__ + e.order_id for e in got["billing"]) == ["Placedo-1", "Placedo-2"]
    assert sorted(type(e).__name__ + e.order_id for e in got["shipping"]) == ["Placedo-1", "Placedo-2", "Shippedo-1"]
    # Nothing else arrived: no message was dead-lettered as unhandled, and the queues drained.
    for service in ("billing", "shipping"):
        wait_until(lambda service=service: queue_counts(sqs, f"{prefix}{service}") == (0, 0), 10)
        assert queue_counts(sqs, f"{prefix}{service}-dlq") == (0, 0)


def test_fifo_keeps_order_within_a_group(make_bus: Callable[..., Bus]) -> None:
    registry = Registry()

    @registry.message(topic="ledger.fifo", group_by="account")
    @attrs.frozen
    class Entry:
        account: str
        seq: int

    seen: dict[str, list[int]] = {}
    lock = threading.Lock()

    @registry.subscribe(Entry)
    def record(entry: Entry) -> None:
        time.sleep(0.01 * (entry.seq % 3))  # uneven handlers would reorder a non-FIFO queue
        with lock:
            seen.setdefault(entry.account, []).append(entry.seq)

    bus = make_bus("books", registry, concurrency=4, prefetch=10).start()
    entries = [Entry(account, seq) for seq in range(15) for account in ("a", "b", "c")]
    bus.publish_many(entries[:30])
    for entry in entries[30:]:
        bus.publish(entry)

    wait_until(lambda: sum(map(len, seen.values())) == 45, 30)
    assert seen == {account: list(range(15)) for account in ("a", "b", "c")}


def test_fifo_retry_holds_back_the_rest_of_its_group(make_bus: Callable[..., Bus]) -> None:
    registry = Registry()

    @registry.message(topic="ledger.fifo", group_by="account")
    @attrs.frozen
    class Entry:
        account: str
        seq: int

    handled: list[tuple[str, int]] = []
    failed_once: set[int] = set()

    @registry.subscribe(Entry, backoff=1.0)
    def record(entry: Entry) -> None:
        if entry.account == "a" and entry.seq == 1 and entry.seq not in failed_once:
            failed_once.add(entry.seq)
            raise RuntimeError("not yet")
        handled.append((entry.account, entry.seq))

    bus = make_bus("books", registry, concurrency=4, prefetch=10).start()
    bus.publish_many([Entry(account, seq) for seq in range(5) for account in ("a", "b")])

    wait_until(lambda: len(handled) == 10, 30)
    assert [seq for account, seq in handled if account == "a"] == [0, 1, 2, 3, 4]
    assert [seq for account, seq in handled if account == "b"] == [0, 1, 2, 3, 4]
    assert failed_once == {1}


def test_fifo_dead_letters_keep_their_group_and_the_group_moves_on(make_bus: Callable[..., Bus]) -> None:
    registry = Registry()

    @registry.message(topic="ledger.fifo", group_by="account")
    @attrs.frozen
    class Entry:
        account: str
        seq: int

    handled: list[int] = []

    @registry.subscribe(Entry, on_failure="dead_letter")
    def record(entry: Entry) -> None:
        if entry.seq == 1:
            raise ValueError("bad entry")
        handled.append(entry.seq)

    bus = make_bus("books", registry).start()
    bus.publish_many([Entry("a", seq) for seq in range(4)])

    wait_until(lambda: handled == [0, 2, 3], 20)
    (dead,) = wait_until(lambda: bus.dead_letters(), 10)
    assert (dead.group_id, dead.headers[h.ERROR_MESSAGE]) == ("a", "bad entry")


def test_fifo_publish_is_deduplicated_by_message_id(make_bus: Callable[..., Bus], prefix: str, sqs: Any) -> None:
    registry = Registry()

    @registry.message(topic="ledger.fifo")
    @attrs.frozen
    class Entry:
        seq: int

    @registry.subscribe(Entry)
    def ignore(entry: Entry) -> None: ...

    bus = make_bus("books", registry)
    bus.provision()
    topic, envelope = bus._marshaller.encode(Entry(1))
    bus.backend.publish(topic, envelope)
    bus.backend.publish(topic, envelope)  # e.g. a publish retried after a lost response

    messages = receive_all(sqs, f"{prefix}books.fifo")
    assert [m["MessageAttributes"][h.MESSAGE_ID]["StringValue"] for m in messages] == [envelope.message_id]
    assert messages[0]["Attributes"]["MessageGroupId"] == "default"


def test_retry_through_the_broker_then_dead_letter(make_bus: Callable[..., Bus], prefix: str, sqs: Any) -> None:
    registry = Registry()
    _declare(registry)
    types = _types(registry)
    attempts: list[tuple[int, float]] = []

    def fail(event: Any, ctx: Any) -> None:
        attempts.append((ctx.envelope.attempt, time.monotonic()))
        raise RuntimeError(f"cannot handle {event.order_id}")

    registry.subscribe(types["Placed"], retries=2, backoff=Backoff(initial=1.0, factor=1.0, jitter=0.0))(fail)
    bus = make_bus("billing", registry).start()
    message_id = bus.publish(types["Placed"]("o-9"), headers={"tenant": "acme"})

    (dead,) = wait_until(lambda: bus.dead_letters(), 30)
    assert [attempt for attempt, _ in attempts] == [1, 2, 3]  # SQS's receive count
    gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(attempts)]
    assert all(gap >= 0.9 for gap in gaps), gaps  # the backoff was a visibility change
    assert dead.message_id == message_id
    assert dead.headers[h.ERROR_REASON] == "handler-failed"
    assert dead.headers[h.ERROR_ATTEMPT] == "3"
    assert dead.headers[h.ERROR_MESSAGE] == "cannot handle o-9"
    assert dead.headers[h.ERROR_HANDLER].endswith("fail")
    assert "RuntimeError" in dead.headers[h.ERROR_TRACEBACK]
    assert dead.headers["tenant"] == "acme"
    wait_until(lambda: queue_counts(sqs, f"{prefix}billing") == (0, 0), 10)  # the original is gone
    assert len(bus.dead_letters()) == 1  # peeking leaves it in place


def test_a_retried_message_that_then_succeeds_is_deleted(make_bus: Callable[..., Bus], prefix: str, sqs: Any) -> None:
    registry = Registry()
    _declare(registry)
    types = _types(registry)
    attempts: list[int] = []

    def flaky(event: Any, ctx: Any) -> None:
        attempts.append(ctx.envelope.attempt)
        if ctx.envelope.attempt == 1:
            raise ConnectionError("try again")

    registry.subscribe(types["Placed"], backoff=0.0)(flaky)
    bus = make_bus("billing", registry).start()
    bus.publish(types["Placed"]("o-1"))

    wait_until(lambda: attempts == [1, 2], 20)
    wait_until(lambda: queue_counts(sqs, f"{prefix}billing") == (0, 0), 10)
    assert bus.dead_letters() == []


def test_poison_goes_to_the_dead_letter_queue_at_once(make_bus: Callable[..., Bus], prefix: str, sqs: Any) -> None:
    registry = Registry()
    _declare(registry)
    types = _types(registry)
    handled: list[Any] = []

    @registry.subscribe(types["Placed"])
    def handle(event: Any) -> None:
        handled.append(event)

    bus = make_bus("billing", registry).start()
    url = queue_url(sqs, f"{prefix}billing")

    def send(body: str, manifest: str | None) -> None:
        attributes = {} if manifest is None else {"manifest": {"DataType": "String", "StringValue": manifest}}
        sqs.send_message(QueueUrl=url, MessageBody=body, MessageAttributes=attributes)

    send('{"order_id": "o-1"}', "Unknown")
    send("{not json", "Placed")
    send('{"order_id": "o-2"}', None)
    send('{"order_id": "o-3"}', "Placed")

    wait_until(lambda: len(bus.dead_letters()) == 3, 20)
    reasons = sorted(dead.headers[h.ERROR_REASON] for dead in bus.dead_letters())
    assert reasons == ["undecodable", "unknown-manifest", "unknown-manifest"]
    wait_until(lambda: len(handled) == 1, 10)
    wait_until(lambda: queue_counts(sqs, f"{prefix}billing") == (0, 0), 10)


def test_visibility_is_extended_while_a_slow_handler_runs(
    make_bus: Callable[..., Bus], url_for: Callable[..., str], prefix: str, sqs: Any
) -> None:
    registry = Registry()
    _declare(registry)
    types = _types(registry)
    calls: list[str] = []
    finished = threading.Event()

    def slow(event: Any) -> None:
        calls.append(event.order_id)
        time.sleep(5)  # more than twice the visibility timeout
        finished.set()

    registry.subscribe(types["Placed"])(slow)
    # Two workers: had the message become visible again, the idle one would take it.
    bus = make_bus("billing", registry, url_for(visibility=2), concurrency=2).start()
    bus.publish(types["Placed"]("o-1"))

    assert finished.wait(15)
    wait_until(lambda: queue_counts(sqs, f"{prefix}billing") == (0, 0), 10)
    assert calls == ["o-1"]


def test_stop_finishes_in_flight_and_returns_the_rest(
    make_bus: Callable[..., Bus], url_for: Callable[..., str], prefix: str, sqs: Any
) -> None:
    registry = Registry()
    _declare(registry)
    types = _types(registry)
    started = threading.Event()
    release = threading.Event()
    handled: list[str] = []

    def blocking(event: Any) -> None:
        started.set()
        assert release.wait(10)
        handled.append(event.order_id)

    registry.subscribe(types["Placed"])(blocking)
    bus = make_bus("billing", registry, concurrency=1, prefetch=5)
    bus.provision()
    bus.publish_many([types["Placed"](f"o-{i}") for i in range(5)])
    bus.start()
    assert started.wait(10)
    wait_until(lambda: queue_counts(sqs, f"{prefix}billing")[1] == 5, 10)  # all five received

    (consumer,) = bus._consumers
    stopper = threading.Thread(target=bus.stop, kwargs={"timeout": 10})
    stopper.start()
    # Release the handler only once the consumer stopped taking messages, or it would take the next one.
    wait_until(consumer._stopping.is_set, 10, message="the consumer to begin stopping")  # type: ignore[attr-defined]
    release.set()
    stopper.join(15)

    assert not stopper.is_alive()
    assert len(handled) == 1
    # The one in flight was handled and deleted; the four never started are visible again at once.
    assert queue_counts(sqs, f"{prefix}billing") == (4, 0)
    remaining = receive_all(sqs, f"{prefix}billing")
    assert sorted(json.loads(m["Body"])["order_id"] for m in remaining) == sorted(
        f"o-{i}" for i in range(5) if f"o-{i}" not in handled
    )


def test_messages_wrapped_by_sns_are_handled(make_bus: Callable[..., Bus], prefix: str, sns: Any) -> None:
    registry = Registry()
    _declare(registry)
    types = _types(registry)
    got: list[tuple[Any, Any]] = []

    @registry.subscribe(types["Placed"])
    def record(event: Any, ctx: Any) -> None:
        got.append((event, ctx.envelope))

    bus = make_bus("billing", registry)
    bus.provision()
    topic_arn = next(t["TopicArn"] for t in sns.list_topics()["Topics"] if t["TopicArn"].endswith(f":{prefix}orders"))
    (sub,) = sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
    # As a queue provisioned by another tool might be: raw delivery off.
    sns.set_subscription_attributes(
        SubscriptionArn=sub["SubscriptionArn"], AttributeName="RawMessageDelivery", AttributeValue="false"
    )
    message_id = bus.publish(types["Placed"]("o-7"), headers={"tenant": "acme"})

    bus.start()  # provisioning turns raw delivery back on; the wrapped message is already queued

    wait_until(lambda: len(got) == 1, 20)
    event, envelope = got[0]
    assert event == types["Placed"]("o-7")
    assert envelope.message_id == message_id
    assert envelope.headers["tenant"] == "acme"
