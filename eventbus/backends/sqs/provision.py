"""Applying a topology to SNS and SQS, idempotently.

Per topic an SNS topic; per queue an SQS queue with a dead-letter queue and
a redrive policy, a queue policy that lets the topics deliver, and one
subscription per topic with raw delivery and a filter policy on the
``manifest`` attribute. What exists is compared with the plan: missing
resources are created, settings that differ are changed when that is safe
(and reported), and left alone and reported when changing them could lose
messages.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import attrs

from eventbus.errors import ConfigurationError, TopologyConflictError
from eventbus.specs import is_fifo
from eventbus.topology import Topology

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.literals import QueueAttributeNameType

log = logging.getLogger("eventbus.sqs")

#: The ``Sid`` of the queue-policy statement that lets the topics deliver.
POLICY_SID = "eventbus-sns-delivery"
#: Dead letters are kept for the longest time SQS allows: 14 days.
DEAD_LETTER_RETENTION = 14 * 24 * 3600
#: SNS accepts at most 150 values in one filter policy.
MAX_FILTER_VALUES = 150
MAX_QUEUE_NAME = 80
MAX_TOPIC_NAME = 256

_SUBSCRIPTION_DEFAULTS = {"RawMessageDelivery": "false", "FilterPolicyScope": "MessageAttributes"}


@attrs.frozen
class Change:
    """One thing provisioning did, or found different and left alone."""

    action: Literal["created", "updated", "left"]
    resource: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.action} {self.resource}" + (f": {self.detail}" if self.detail else "")


@attrs.frozen
class Provisioned:
    """The outcome of applying a topology: what changed, and the addresses found."""

    changes: tuple[Change, ...]
    topic_arns: dict[str, str]
    queue_urls: dict[str, str]


@attrs.frozen
class Names:
    """Physical names: the logical ones with the namespace prefix."""

    prefix: str = ""

    def topic(self, name: str) -> str:
        """The SNS topic name of topic ``name``."""
        return self.prefix + name

    def queue(self, name: str) -> str:
        """The SQS queue name of queue ``name``."""
        return self.prefix + name


def queue_settings(dead_letter_arn: str, *, max_receives: int, visibility: int) -> dict[QueueAttributeNameType, str]:
    """The attributes a service queue should have."""
    redrive = {"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": max_receives}
    return {"VisibilityTimeout": str(visibility), "RedrivePolicy": json.dumps(redrive)}


#: The attributes a dead-letter queue should have.
DEAD_LETTER_SETTINGS: dict[QueueAttributeNameType, str] = {"MessageRetentionPeriod": str(DEAD_LETTER_RETENTION)}


def subscription_settings(manifests: Iterable[str]) -> dict[str, str]:
    """The attributes of the subscription of a queue that takes ``manifests`` from a topic."""
    return {
        "RawMessageDelivery": "true",
        "FilterPolicyScope": "MessageAttributes",
        "FilterPolicy": json.dumps({"manifest": list(manifests)}),
    }


class Reader:
    """Reads what SNS and SQS have; changes nothing (shared by provisioning and inspection)."""

    def __init__(self, sns: SNSClient, sqs: SQSClient) -> None:
        self._sns = sns
        self._sqs = sqs

    def topic_arns(self) -> dict[str, str]:
        """SNS topic name -> ARN, for every topic."""
        arns: dict[str, str] = {}
        for page in self._sns.get_paginator("list_topics").paginate():
            for topic in page.get("Topics", []):
                if "TopicArn" in topic:
                    arns[topic["TopicArn"].rsplit(":", 1)[-1]] = topic["TopicArn"]
        return arns

    def queue_url(self, name: str) -> str | None:
        """The URL of SQS queue ``name``, or None if there is none."""
        try:
            return self._sqs.get_queue_url(QueueName=name)["QueueUrl"]
        except self._sqs.exceptions.QueueDoesNotExist:
            return None

    def queue_attributes(self, url: str) -> dict[str, str]:
        """Every attribute of the queue at ``url``."""
        attributes = self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        return {str(key): value for key, value in attributes.items()}

    def queue_subscriptions(self, topic_arn: str | None = None) -> Iterator[tuple[str, str, str]]:
        """``(topic ARN, queue ARN, subscription ARN)`` of the SQS subscriptions of a topic, or of all topics."""
        if topic_arn is None:
            pages: Iterable[Any] = self._sns.get_paginator("list_subscriptions").paginate()
        else:
            pages = self._sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn)
        for page in pages:
            for sub in page.get("Subscriptions", []):
                if sub.get("Protocol") == "sqs" and "Endpoint" in sub and "SubscriptionArn" in sub:
                    yield sub.get("TopicArn", topic_arn or ""), sub["Endpoint"], sub["SubscriptionArn"]

    def subscription_attributes(self, arn: str) -> dict[str, str]:
        """The attributes of subscription ``arn``, with SNS's defaults for those it leaves out."""
        current = self._sns.get_subscription_attributes(SubscriptionArn=arn).get("Attributes", {})
        return {**_SUBSCRIPTION_DEFAULTS, **{key: value for key, value in current.items() if value}}


class Provisioner:
    """Applies topologies with one pair of clients and one set of settings."""

    def __init__(self, sns: SNSClient, sqs: SQSClient, names: Names, *, max_receives: int, visibility: int) -> None:
        self._sns = sns
        self._sqs = sqs
        self._read = Reader(sns, sqs)
        self._names = names
        self._max_receives = max_receives
        self._visibility = visibility
        self._changes: list[Change] = []

    def apply(self, topology: Topology) -> Provisioned:
        """Create or reconcile everything ``topology`` needs."""
        self._changes = []
        self._check(topology)
        topic_arns = self._topics(topology.topics)
        queue_urls: dict[str, str] = {}
        queue_arns: dict[str, str] = {}
        for plan in topology.queues:
            dlq_url, dlq_arn = self._queue(
                plan.dead_letter, plan.fifo, DEAD_LETTER_SETTINGS, keep={"MessageRetentionPeriod"}
            )
            sources = sorted({topic_arns[s.topic] for s in topology.subscriptions if s.queue == plan.name})
            url, arn = self._queue(
                plan.name,
                plan.fifo,
                queue_settings(dlq_arn, max_receives=self._max_receives, visibility=self._visibility),
                sources=sources,
            )
            queue_urls[plan.dead_letter] = dlq_url
            queue_urls[plan.name] = url
            queue_arns[plan.name] = arn
        self._subscriptions(topology, topic_arns, queue_arns)
        for change in self._changes:
            log.log(logging.INFO if change.action == "created" else logging.WARNING, "provisioning: %s", change)
        return Provisioned(tuple(self._changes), topic_arns, queue_urls)

    def _note(self, action: Literal["created", "updated", "left"], resource: str, detail: str = "") -> None:
        self._changes.append(Change(action, resource, detail))

    # -- checks -------------------------------------------------------------

    def _check(self, topology: Topology) -> None:
        for topic in topology.topics:
            name = self._names.topic(topic)
            if len(name) > MAX_TOPIC_NAME:
                raise ConfigurationError(f"SNS topic name {name!r} is longer than {MAX_TOPIC_NAME} characters")
        for plan in topology.queues:
            for queue in (plan.name, plan.dead_letter):
                name = self._names.queue(queue)
                if len(name) > MAX_QUEUE_NAME:
                    raise ConfigurationError(
                        f"SQS queue name {name!r} is longer than {MAX_QUEUE_NAME} characters; "
                        "use a shorter prefix= or service name"
                    )
        for sub in topology.subscriptions:
            if len(sub.manifests) > MAX_FILTER_VALUES:
                raise ConfigurationError(
                    f"queue {sub.queue!r} takes {len(sub.manifests)} message types from topic {sub.topic!r}; an SNS "
                    f"filter policy holds at most {MAX_FILTER_VALUES}: give some handlers their own queue (queue=...)"
                )

    # -- topics -------------------------------------------------------------

    def _topics(self, topics: Iterable[str]) -> dict[str, str]:
        existing = self._read.topic_arns()
        arns: dict[str, str] = {}
        for topic in topics:
            name = self._names.topic(topic)
            arn = existing.get(name)
            if arn is None:
                attributes = {"FifoTopic": "true"} if is_fifo(name) else {}
                arn = self._sns.create_topic(Name=name, Attributes=attributes)["TopicArn"]
                self._note("created", f"topic {name}")
            arns[topic] = arn
        return arns

    # -- queues -------------------------------------------------------------

    def _queue(
        self,
        queue: str,
        fifo: bool,
        wanted: dict[QueueAttributeNameType, str],
        *,
        keep: set[str] | None = None,
        sources: list[str] | None = None,
    ) -> tuple[str, str]:
        """Ensure queue ``queue`` exists with ``wanted``; return its URL and ARN.

        Attributes named in ``keep`` are set when the queue is created and
        only reported when an existing queue differs.
        """
        name = self._names.queue(queue)
        url = self._read.queue_url(name)
        if url is None:
            attributes = dict(wanted)
            if fifo:
                attributes["FifoQueue"] = "true"
            url = self._sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
            self._note("created", f"queue {name}")
            arn = self._queue_arn(url)
            policy = merged_policy(name, None, arn, sources) if sources else None
            if policy is not None:
                self._sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy})
            return url, arn
        found = self._read.queue_attributes(url)
        arn = found["QueueArn"]
        updates: dict[QueueAttributeNameType, str] = {}
        for key, value in wanted.items():
            old = found.get(key)
            if same_attribute(key, old, value):
                continue
            if keep and key in keep:
                self._note("left", f"queue {name}", f"{key} is {old}, the plan says {value}; not changed")
                continue
            updates[key] = value
            self._note("updated", f"queue {name}", f"{key} {old} -> {value}")
        if sources:
            policy = merged_policy(name, found.get("Policy"), arn, sources)
            if policy is not None:
                updates["Policy"] = policy
                self._note("updated", f"queue {name}", f"policy now lets {', '.join(sources)} deliver")
            elif updates and "Policy" in found:
                # Some servers reset the attributes a call leaves out: send the policy along.
                updates["Policy"] = found["Policy"]
        if updates:
            self._sqs.set_queue_attributes(QueueUrl=url, Attributes=updates)
        return url, arn

    def _queue_arn(self, url: str) -> str:
        return self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    # -- subscriptions --------------------------------------------------------

    def _subscriptions(self, topology: Topology, topic_arns: dict[str, str], queue_arns: dict[str, str]) -> None:
        planned = {(sub.topic, sub.queue): sub.manifests for sub in topology.subscriptions}
        for topic in topology.topics:
            existing = self._queue_subscriptions(topic_arns[topic])
            for queue, queue_arn in queue_arns.items():
                resource = f"subscription {self._names.topic(topic)} -> {self._names.queue(queue)}"
                arn = existing.get(queue_arn)
                manifests = planned.get((topic, queue))
                if manifests is None:
                    if arn is not None:
                        self._note(
                            "left",
                            resource,
                            "not in the plan; messages it delivers will be dead-lettered as no-handler. "
                            "Unsubscribe it once no running version of the service needs it",
                        )
                    continue
                wanted = subscription_settings(manifests)
                if arn is None:
                    self._sns.subscribe(
                        TopicArn=topic_arns[topic],
                        Protocol="sqs",
                        Endpoint=queue_arn,
                        Attributes=wanted,
                        ReturnSubscriptionArn=True,
                    )
                    self._note("created", resource, f"filter manifest in [{', '.join(manifests)}]")
                elif arn == "PendingConfirmation":
                    self._note("left", resource, "waiting for confirmation (a queue in another account?)")
                else:
                    self._reconcile_subscription(resource, arn, wanted)

    def _queue_subscriptions(self, topic_arn: str) -> dict[str, str]:
        """Queue ARN -> subscription ARN of the SQS subscriptions of a topic."""
        return {queue: sub for _, queue, sub in self._read.queue_subscriptions(topic_arn)}

    def _reconcile_subscription(self, resource: str, arn: str, wanted: dict[str, str]) -> None:
        current = self._read.subscription_attributes(arn)
        for key, value in wanted.items():
            old = current.get(key)
            if same_attribute(key, old, value):
                continue
            # All safe: the consumer reads raw and wrapped messages, and the
            # filter is what this service handles now.
            self._sns.set_subscription_attributes(SubscriptionArn=arn, AttributeName=key, AttributeValue=value)
            self._note("updated", resource, f"{key} {old} -> {value}")


def same_attribute(key: str, old: str | None, new: str) -> bool:
    """Whether attribute ``key`` has the value ``new`` (JSON policies compared as data)."""
    if old is None:
        return False
    if key in ("RedrivePolicy", "FilterPolicy", "Policy"):
        try:
            return bool(_normalized(json.loads(old)) == _normalized(json.loads(new)))
        except ValueError:
            return False
    return old == new


def _normalized(value: Any) -> Any:
    """JSON with numbers as strings and lists sorted, for comparisons."""
    if isinstance(value, dict):
        return {key: _normalized(item) for key, item in value.items()}
    if isinstance(value, list):
        return sorted((_normalized(item) for item in value), key=json.dumps)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def merged_policy(queue: str, current: str | None, queue_arn: str, sources: list[str]) -> str | None:
    """The queue policy with our statement allowing ``sources``, or None if it already does.

    Statements of others are kept, and so are topics we allowed before
    (an older version of the service may still rely on them).
    """
    try:
        document = json.loads(current) if current else {}
    except ValueError:
        raise TopologyConflictError(
            f"queue {queue} has a policy that is not valid JSON; fix or remove it so that SNS can deliver"
        ) from None
    if not isinstance(document, dict):
        raise TopologyConflictError(f"queue {queue} has a policy that is not a JSON object; fix or remove it")
    statements = document.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    ours = next((s for s in statements if isinstance(s, dict) and s.get("Sid") == POLICY_SID), None)
    allowed: set[str] = set()
    if ours is not None:
        previous = ours.get("Condition", {}).get("ArnEquals", {}).get("aws:SourceArn", [])
        allowed = {previous} if isinstance(previous, str) else set(previous)
    statement = {
        "Sid": POLICY_SID,
        "Effect": "Allow",
        "Principal": {"Service": "sns.amazonaws.com"},
        "Action": "sqs:SendMessage",
        "Resource": queue_arn,
        "Condition": {"ArnEquals": {"aws:SourceArn": sorted(allowed | set(sources))}},
    }
    if ours == statement:
        return None
    document.setdefault("Version", "2012-10-17")
    document["Statement"] = [s for s in statements if s is not ours] + [statement]
    return json.dumps(document)
