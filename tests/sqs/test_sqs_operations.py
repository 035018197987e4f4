"""Operations on SNS/SQS: replaying and purging dead letters, and comparing the topology with what is there."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqs_helpers import declare_shop, queue_counts, queue_url, receive_all

from eventbus import Bus, Envelope, PublishError, Registry
from eventbus.backends.sqs import SqsBackend, wire

pytestmark = pytest.mark.sqs


def shop(make_bus: Callable[..., Bus], url: str | None = None) -> tuple[Bus, SqsBackend]:
    """Service ``svc`` takes OrderPlaced and OrderCancelled from ``orders``, Audited from ``audit.fifo``."""
    registry = Registry()
    kinds = declare_shop(registry)

    @registry.subscribe(kinds.OrderPlaced, kinds.OrderCancelled)
    def on_order(event: Any) -> None: ...

    @registry.subscribe(kinds.Audited)
    def on_audit(event: Any) -> None: ...

    bus = make_bus("svc", registry, url)
    backend = bus.backend
    assert isinstance(backend, SqsBackend)
    return bus, backend


def dead_letter(n: int, **fields: Any) -> Envelope:
    """A dead letter as the dispatcher makes it: error headers, attempt 3, a user header."""
    fields.setdefault("manifest", "OrderPlaced")
    return Envelope(
        body=f'{{"order_id": "o-{n}"}}'.encode(),
        message_id=f"m{n}-{time.time_ns()}",
        timestamp=time.time(),
        attempt=3,
        headers={
            "tenant": "acme",
            "error-reason": "handler-failed",
            "error-message": f"order {n} failed",
            "error-attempt": "3",
            "dead-lettered-at": str(time.time()),
        },
        **fields,
    )


def taken(sqs: Any, name: str) -> list[Envelope]:
    return [wire.decode(message, count_attempts=False) for message in receive_all(sqs, name, wait=0)]


def test_replay_moves_the_chosen_dead_letters_back_and_leaves_the_others(
    make_bus: Callable[..., Bus], prefix: str, sqs: Any
) -> None:
    bus, backend = shop(make_bus)
    bus.provision()
    letters = [dead_letter(n) for n in range(5)]
    ids = [letter.message_id for letter in letters]
    for letter in letters:
        backend.send_dead_letter("svc", letter)

    assert sorted(backend.replay_dead_letters("svc", message_ids=[ids[3], ids[1], "not-there"])) == [ids[1], ids[3]]
    back = taken(sqs, f"{prefix}svc")
    assert sorted(e.message_id for e in back) == [ids[1], ids[3]]
    for envelope in back:
        original = letters[ids.index(envelope.message_id)]
        assert envelope.attempt == 1
        assert envelope.headers == {"tenant": "acme"}  # no error-* nor dead-lettered-at
        assert (envelope.body, envelope.manifest) == (original.body, original.manifest)
    # The others are visible again at once, and untouched.
    assert queue_counts(sqs, f"{prefix}svc-dlq") == (3, 0)
    assert sorted(e.message_id for e in backend.dead_letters("svc", 10)) == sorted([ids[0], ids[2], ids[4]])

    assert backend.replay_dead_letters("svc", message_ids=["nope"]) == []
    assert len(backend.replay_dead_letters("svc", limit=2)) == 2
    assert queue_counts(sqs, f"{prefix}svc-dlq") == (1, 0)
    assert len(taken(sqs, f"{prefix}svc")) == 2

    # A message some other program put there, without our attributes, goes back too (its SQS id stands in).
    sqs.send_message(QueueUrl=queue_url(sqs, f"{prefix}svc-dlq"), MessageBody="garbage")
    assert len(backend.replay_dead_letters("svc")) == 2
    assert queue_counts(sqs, f"{prefix}svc-dlq") == (0, 0)
    assert sorted(e.body for e in taken(sqs, f"{prefix}svc")) == sorted([b"garbage", letters[4].body])
    assert backend.replay_dead_letters("svc") == []


def test_replay_on_fifo_keeps_the_group_and_is_not_swallowed_by_deduplication(
    make_bus: Callable[..., Bus], prefix: str, sqs: Any
) -> None:
    bus, backend = shop(make_bus)
    bus.provision()
    letter = dead_letter(1, manifest="Audited", group_id="o-1")
    backend.send("svc.fifo", letter)  # the original went through the queue moments ago: its id is in the window
    receive_all(sqs, f"{prefix}svc.fifo", wait=0)
    backend.send_dead_letter("svc.fifo", letter)
    assert backend.replay_dead_letters("svc.fifo") == [letter.message_id]
    messages = receive_all(sqs, f"{prefix}svc.fifo", wait=0)
    assert len(messages) == 1
    assert messages[0]["Attributes"]["MessageGroupId"] == "o-1"
    assert wire.decode(messages[0], count_attempts=False).message_id == letter.message_id


def test_a_copy_that_cannot_be_stored_leaves_its_dead_letter_in_place(
    make_bus: Callable[..., Bus], prefix: str, sqs: Any
) -> None:
    bus, backend = shop(make_bus)
    bus.provision()
    for n in range(3):
        backend.send_dead_letter("svc", dead_letter(n))
    assert backend.queue_url("svc") is not None  # known to the backend ...
    sqs.delete_queue(QueueUrl=queue_url(sqs, f"{prefix}svc"))  # ... and deleted behind its back
    with pytest.raises(PublishError, match=rf"3 dead letter\(s\) could not be copied to queue {prefix}svc"):
        backend.replay_dead_letters("svc")
    assert queue_counts(sqs, f"{prefix}svc-dlq") == (3, 0)


def test_purge_deletes_the_dead_letters_and_keeps_the_queue(
    make_bus: Callable[..., Bus], prefix: str, sqs: Any
) -> None:
    bus, backend = shop(make_bus)
    bus.provision()
    for n in range(12):
        backend.send_dead_letter("svc", dead_letter(n))
    backend.send("svc", dead_letter(99))
    assert backend.purge_dead_letters("svc") == 12
    assert queue_counts(sqs, f"{prefix}svc-dlq") == (0, 0)
    assert queue_counts(sqs, f"{prefix}svc") == (1, 0)
    assert backend.purge_dead_letters("svc") == 0
    assert backend.purge_dead_letters("nothing") == 0


def snapshot(sqs: Any, sns: Any, prefix: str) -> dict[str, Any]:
    """Every attribute of this test's queues, topics and subscriptions, to show that inspect changes nothing."""
    queues = {
        url: sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        for url in sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", [])
    }
    subscriptions = {
        sub["SubscriptionArn"]: sns.get_subscription_attributes(SubscriptionArn=sub["SubscriptionArn"])["Attributes"]
        for sub in sns.list_subscriptions()["Subscriptions"]
        if prefix in sub["TopicArn"]
    }
    topics = sorted(t["TopicArn"] for t in sns.list_topics()["Topics"] if prefix in t["TopicArn"])
    return {"queues": queues, "subscriptions": subscriptions, "topics": topics}


def test_inspect_reports_missing_extra_and_different_and_changes_nothing(
    make_bus: Callable[..., Bus], url_for: Callable[..., str], prefix: str, sqs: Any, sns: Any
) -> None:
    bus, backend = shop(make_bus, url_for(max_receives=5, visibility=30))
    topology = bus.topology()
    report = backend.inspect(topology)
    assert [str(d) for d in report.missing] == [
        "topic audit.fifo",
        "topic orders",
        "topic payments",
        "queue svc",
        "queue svc.fifo",
        "dead-letter queue svc-dlq",
        "dead-letter queue svc-dlq.fifo",
        "subscription audit.fifo -> svc.fifo",
        "subscription orders -> svc",
    ]
    assert report.extra == report.different == ()

    bus.provision()
    assert backend.inspect(topology).in_sync

    topics = {t["TopicArn"].rsplit(":", 1)[-1]: t["TopicArn"] for t in sns.list_topics()["Topics"]}
    (orders_sub,) = [
        s["SubscriptionArn"]
        for s in sns.list_subscriptions_by_topic(TopicArn=topics[f"{prefix}orders"])["Subscriptions"]
    ]
    sns.set_subscription_attributes(
        SubscriptionArn=orders_sub, AttributeName="FilterPolicy", AttributeValue='{"manifest": ["OrderPlaced", "X"]}'
    )
    sns.set_subscription_attributes(
        SubscriptionArn=orders_sub, AttributeName="RawMessageDelivery", AttributeValue="false"
    )
    (audit_sub,) = sns.list_subscriptions_by_topic(TopicArn=topics[f"{prefix}audit.fifo"])["Subscriptions"]
    sns.unsubscribe(SubscriptionArn=audit_sub["SubscriptionArn"])
    returns = sns.create_topic(Name=f"{prefix}returns")["TopicArn"]
    svc = queue_url(sqs, f"{prefix}svc")
    svc_arn = sqs.get_queue_attributes(QueueUrl=svc, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(
        TopicArn=returns,
        Protocol="sqs",
        Endpoint=svc_arn,
        Attributes={"RawMessageDelivery": "true", "FilterPolicy": '{"manifest": ["ReturnOpened"]}'},
    )
    attributes = sqs.get_queue_attributes(QueueUrl=svc, AttributeNames=["All"])["Attributes"]
    dlq_arn = json.loads(attributes["RedrivePolicy"])["deadLetterTargetArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3})
    # (The local server forgets the attributes a call leaves out: the policy goes along.)
    changed = {"VisibilityTimeout": "60", "RedrivePolicy": redrive, "Policy": attributes["Policy"]}
    sqs.set_queue_attributes(QueueUrl=svc, Attributes=changed)
    sqs.set_queue_attributes(
        QueueUrl=queue_url(sqs, f"{prefix}svc-dlq"), Attributes={"MessageRetentionPeriod": "86400"}
    )
    sns.delete_topic(TopicArn=topics[f"{prefix}payments"])
    before = snapshot(sqs, sns, prefix)

    report = backend.inspect(topology)
    assert str(report).splitlines() == [
        "service svc",
        "  missing    topic payments",
        "  missing    subscription audit.fifo -> svc.fifo",
        "  extra      subscription returns -> svc: manifests: ReturnOpened",
        "  different  queue svc: VisibilityTimeout: plan 30, broker 60; maxReceiveCount: plan 5, broker 3",
        "  different  dead-letter queue svc-dlq: MessageRetentionPeriod: plan 1209600, broker 86400",
        "  different  subscription orders -> svc: RawMessageDelivery: plan true, broker false",
        "  different  subscription orders -> svc: manifests: plan only OrderCancelled; broker only X",
        "out of sync: 2 missing, 1 extra, 4 different",
    ]
    assert snapshot(sqs, sns, prefix) == before, "inspect changed something"

    # A queue without a redrive policy, and whose policy lets no topic deliver.
    sqs.set_queue_attributes(QueueUrl=svc, Attributes={"RedrivePolicy": "", "Policy": "", "VisibilityTimeout": "30"})
    assert [str(d) for d in backend.inspect(topology).different if d.kind == "queue"] == [
        "queue svc: its policy does not let every topic it subscribes to deliver",
        "queue svc: dead_letter: plan svc-dlq, broker (none)",
    ]
