"""Provisioning: exactly the planned resources, idempotent, and careful with what exists."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from sqs_helpers import declare_shop, queue_url

from eventbus import Bus, ConfigurationError, Registry
from eventbus.backends import from_url
from eventbus.backends.sqs import SqsBackend

pytestmark = pytest.mark.sqs


def _registry(*, handle_payments: bool = True) -> Registry:
    registry = Registry()
    kinds = declare_shop(registry)

    @registry.subscribe(kinds.OrderPlaced, *([kinds.PaymentFailed] if handle_payments else []))
    def on_order(event: Any) -> None: ...

    @registry.subscribe(kinds.Audited)
    def on_audit(event: Any) -> None: ...

    return registry


def _topics(sns: Any, prefix: str) -> dict[str, str]:
    arns = [t["TopicArn"] for t in sns.list_topics()["Topics"]]
    return {arn.rsplit(":", 1)[-1]: arn for arn in arns if arn.rsplit(":", 1)[-1].startswith(prefix)}


def _queue_attributes(sqs: Any, name: str) -> dict[str, str]:
    return dict(sqs.get_queue_attributes(QueueUrl=queue_url(sqs, name), AttributeNames=["All"])["Attributes"])


def _subscriptions(sns: Any, topic_arn: str) -> dict[str, dict[str, str]]:
    """Queue name -> subscription attributes."""
    found = {}
    for sub in sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]:
        attributes = sns.get_subscription_attributes(SubscriptionArn=sub["SubscriptionArn"])["Attributes"]
        found[sub["Endpoint"].rsplit(":", 1)[-1]] = attributes
    return found


def _subscription_arns(sns: Any, topics: dict[str, str]) -> set[str]:
    return {
        sub["SubscriptionArn"]
        for arn in topics.values()
        for sub in sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]
    }


def test_creates_exactly_the_plan_and_a_second_run_changes_nothing(
    make_bus: Callable[..., Bus], url_for: Callable[..., str], prefix: str, sqs: Any, sns: Any
) -> None:
    bus = make_bus("billing", _registry(), url_for(max_receives=7, visibility=45))
    backend = bus.backend
    assert isinstance(backend, SqsBackend)

    first = backend.apply(bus.topology())

    topics = _topics(sns, prefix)
    assert set(topics) == {f"{prefix}orders", f"{prefix}payments", f"{prefix}audit.fifo"}
    assert sns.get_topic_attributes(TopicArn=topics[f"{prefix}audit.fifo"])["Attributes"]["FifoTopic"] == "true"
    queues = {u.rsplit("/", 1)[-1] for u in sqs.list_queues(QueueNamePrefix=prefix)["QueueUrls"]}
    assert queues == {f"{prefix}billing", f"{prefix}billing-dlq", f"{prefix}billing.fifo", f"{prefix}billing-dlq.fifo"}

    for queue, dlq in (("billing", "billing-dlq"), ("billing.fifo", "billing-dlq.fifo")):
        attributes = _queue_attributes(sqs, prefix + queue)
        dead = _queue_attributes(sqs, prefix + dlq)
        assert json.loads(attributes["RedrivePolicy"]) == {
            "deadLetterTargetArn": dead["QueueArn"],
            "maxReceiveCount": 7,
        }
        assert attributes["VisibilityTimeout"] == "45"
        assert dead["MessageRetentionPeriod"] == str(14 * 24 * 3600)
        assert ("FifoQueue" in attributes) == queue.endswith(".fifo")

    # The queue policy lets exactly the subscribed topics deliver.
    policy = json.loads(_queue_attributes(sqs, f"{prefix}billing")["Policy"])
    (statement,) = policy["Statement"]
    assert statement["Principal"] == {"Service": "sns.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Resource"] == _queue_attributes(sqs, f"{prefix}billing")["QueueArn"]
    assert sorted(statement["Condition"]["ArnEquals"]["aws:SourceArn"]) == sorted(
        [topics[f"{prefix}orders"], topics[f"{prefix}payments"]]
    )

    # One subscription per (topic, queue), raw, filtered on the handled manifests.
    expected = {
        "orders": (f"{prefix}billing", ["OrderPlaced"]),
        "payments": (f"{prefix}billing", ["PaymentFailed"]),
        "audit.fifo": (f"{prefix}billing.fifo", ["Audited"]),
    }
    for topic, (queue, manifests) in expected.items():
        subscriptions = _subscriptions(sns, topics[prefix + topic])
        assert list(subscriptions) == [queue]
        assert subscriptions[queue]["RawMessageDelivery"] == "true"
        assert json.loads(subscriptions[queue]["FilterPolicy"]) == {"manifest": manifests}

    assert sum(c.action == "created" for c in first.changes) == 3 + 4 + 3
    before = {q: _queue_attributes(sqs, prefix + q)["LastModifiedTimestamp"] for q in ("billing", "billing-dlq")}
    subscription_arns = {
        s["SubscriptionArn"]
        for arn in topics.values()
        for s in sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]
    }

    second = backend.apply(bus.topology())

    assert second.changes == ()
    assert {q: _queue_attributes(sqs, prefix + q)["LastModifiedTimestamp"] for q in before} == before
    assert {
        s["SubscriptionArn"]
        for arn in topics.values()
        for s in sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]
    } == subscription_arns


def test_differences_are_reported_and_only_safe_ones_changed(
    make_bus: Callable[..., Bus], prefix: str, sqs: Any, sns: Any
) -> None:
    bus = make_bus("billing", _registry())
    backend = bus.backend
    assert isinstance(backend, SqsBackend)
    backend.apply(bus.topology())
    url = queue_url(sqs, f"{prefix}billing")
    dlq_url = queue_url(sqs, f"{prefix}billing-dlq")
    orders = _topics(sns, prefix)[f"{prefix}orders"]
    (sub,) = sns.list_subscriptions_by_topic(TopicArn=orders)["Subscriptions"]

    # Someone changes things by hand.
    sns.set_subscription_attributes(
        SubscriptionArn=sub["SubscriptionArn"], AttributeName="FilterPolicy", AttributeValue='{"manifest": ["Other"]}'
    )
    sns.set_subscription_attributes(
        SubscriptionArn=sub["SubscriptionArn"], AttributeName="RawMessageDelivery", AttributeValue="false"
    )
    redrive = json.loads(_queue_attributes(sqs, f"{prefix}billing")["RedrivePolicy"])
    policy = _queue_attributes(sqs, f"{prefix}billing")["Policy"]  # moto drops what a call leaves out
    sqs.set_queue_attributes(
        QueueUrl=url,
        Attributes={
            "VisibilityTimeout": "99",
            "RedrivePolicy": json.dumps({**redrive, "maxReceiveCount": 2}),
            "Policy": policy,
        },
    )
    sqs.set_queue_attributes(QueueUrl=dlq_url, Attributes={"MessageRetentionPeriod": "3600"})

    changes = {(c.action, c.resource, c.detail.split(" ")[0]) for c in backend.apply(bus.topology()).changes}

    assert changes == {
        ("updated", f"subscription {prefix}orders -> {prefix}billing", "FilterPolicy"),
        ("updated", f"subscription {prefix}orders -> {prefix}billing", "RawMessageDelivery"),
        ("updated", f"queue {prefix}billing", "VisibilityTimeout"),
        ("updated", f"queue {prefix}billing", "RedrivePolicy"),
        # Shortening or lengthening the retention of dead letters is the operator's call.
        ("left", f"queue {prefix}billing-dlq", "MessageRetentionPeriod"),
    }
    attributes = sns.get_subscription_attributes(SubscriptionArn=sub["SubscriptionArn"])["Attributes"]
    assert json.loads(attributes["FilterPolicy"]) == {"manifest": ["OrderPlaced"]}
    assert attributes["RawMessageDelivery"] == "true"
    assert json.loads(_queue_attributes(sqs, f"{prefix}billing")["RedrivePolicy"])["maxReceiveCount"] == 10
    assert _queue_attributes(sqs, f"{prefix}billing")["VisibilityTimeout"] == "10"
    assert _queue_attributes(sqs, f"{prefix}billing-dlq")["MessageRetentionPeriod"] == "3600"


def test_a_subscription_no_longer_planned_is_reported_not_removed(
    make_bus: Callable[..., Bus], prefix: str, sns: Any
) -> None:
    bus = make_bus("billing", _registry())
    backend = bus.backend
    assert isinstance(backend, SqsBackend)
    backend.apply(bus.topology())

    # The next version of the service stops handling PaymentFailed.
    newer = make_bus("billing", _registry(handle_payments=False))
    changes = backend.apply(newer.topology()).changes

    assert [(c.action, c.resource) for c in changes] == [("left", f"subscription {prefix}payments -> {prefix}billing")]
    assert "no-handler" in changes[0].detail
    payments = _topics(sns, prefix)[f"{prefix}payments"]
    assert len(sns.list_subscriptions_by_topic(TopicArn=payments)["Subscriptions"]) == 1


def test_url_options(endpoint: str) -> None:
    backend = from_url(
        f"sqs://key:se%2Fcret@?region=eu-west-1&endpoint={endpoint}&prefix=dev-&max_receives=4&wait=3&visibility=60"
    )
    assert isinstance(backend, SqsBackend)
    assert (backend.region, backend.endpoint, backend.names.prefix) == ("eu-west-1", endpoint, "dev-")
    assert (backend.max_receives, backend.wait, backend.visibility) == (4, 3, 60)
    credentials = backend._session.get_credentials()
    assert credentials is not None
    assert (credentials.access_key, credentials.secret_key) == ("key", "se/cret")
    assert "se/cret" not in repr(backend)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("sqs://?region=us-east-1&visibilty=3", "unknown option(s) visibilty"),
        ("sqs://localhost:4566?region=us-east-1", "endpoint="),
        ("sqs://?region=us-east-1&wait=30", "wait=30 must be between 0 and 20"),
        ("sqs://?region=us-east-1&max_receives=x", "max_receives='x' must be a whole number"),
        ("sqs://?region=us-east-1&prefix=a.b", "prefix='a.b'"),
        ("sqs://?region=us-east-1&endpoint=127.0.0.1:9324", "http:// or https://"),
        ("sqs://k:topsecret@?region=us-east-1&bogus=1", "k:***@"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        from_url(url)
    assert complaint in str(error.value)
    assert "topsecret" not in str(error.value)


def test_missing_region_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for variable in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(ConfigurationError, match="region"):
        from_url("sqs://")


def test_names_too_long_for_sqs_are_refused(make_bus: Callable[..., Bus], url_for: Callable[..., str]) -> None:
    bus = make_bus("b" * 70, _registry(), url_for(prefix="p" * 12))
    with pytest.raises(ConfigurationError, match="longer than 80"):
        bus.provision()
