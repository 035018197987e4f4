"""What SNS and SQS have, compared with a plan (``eventbus topology --diff``).

It reads with the provisioner's :class:`~.provision.Reader` and holds what
it finds against the settings provisioning would apply: the topics; each
queue with its redrive policy (dead-letter queue and receive count), its
visibility timeout and a queue policy that lets its topics deliver; each
dead-letter queue with its retention; and every SQS subscription of the
service's queues, on any topic, with its filter policy, raw delivery and
filter scope. Nothing is created or changed.
"""

from __future__ import annotations

import json
from typing import Any

from eventbus import inspection
from eventbus.backends.sqs.provision import (
    DEAD_LETTER_SETTINGS,
    Names,
    Reader,
    merged_policy,
    queue_settings,
    same_attribute,
    subscription_settings,
)
from eventbus.errors import TopologyConflictError
from eventbus.topology import Topology


def inspect(
    reader: Reader, names: Names, topology: Topology, *, max_receives: int, visibility: int
) -> inspection.TopologyReport:
    """The report of what SNS/SQS lack, have in excess or have otherwise than ``topology`` needs."""
    found: inspection.Resources = {}
    problems: list[inspection.Difference] = []

    def problem(kind: str, name: str, details: list[str]) -> None:
        if details:
            problems.append(inspection.Difference(kind, name, "; ".join(details)))

    topic_arns = reader.topic_arns()
    for topic in topology.topics:
        if names.topic(topic) in topic_arns:
            found[(inspection.TOPIC, topic)] = {}

    queue_arns: dict[str, str] = {}  # queue ARN -> the queue's name in the plan
    for plan in topology.queues:
        dlq_url = reader.queue_url(names.queue(plan.dead_letter))
        if dlq_url is not None:
            attributes = reader.queue_attributes(dlq_url)
            found[(inspection.DEAD_LETTER_QUEUE, plan.dead_letter)] = {}
            problem(inspection.DEAD_LETTER_QUEUE, plan.dead_letter, _changes(DEAD_LETTER_SETTINGS, attributes))
        url = reader.queue_url(names.queue(plan.name))
        if url is None:
            continue
        attributes = reader.queue_attributes(url)
        arn = attributes.get("QueueArn", "")
        queue_arns[arn] = plan.name
        redrive = _json_object(attributes.get("RedrivePolicy"))
        target = str(redrive.get("deadLetterTargetArn", ""))
        found[(inspection.QUEUE, plan.name)] = {
            "dead_letter": _logical(names.prefix, target.rsplit(":", 1)[-1]) if target else "(none)",
            "fifo": attributes.get("FifoQueue") == "true",
        }
        # The redrive target is the dead_letter setting; its receive count is compared on its own.
        details = _changes(queue_settings(target, max_receives=1, visibility=visibility), attributes, "RedrivePolicy")
        receives = redrive.get("maxReceiveCount")
        if target and str(receives) != str(max_receives):
            details.append(f"maxReceiveCount: plan {max_receives}, broker {receives}")
        sources = sorted(
            topic_arns[names.topic(sub.topic)]
            for sub in topology.subscriptions
            if sub.queue == plan.name and names.topic(sub.topic) in topic_arns
        )
        if sources:
            try:
                if merged_policy(plan.name, attributes.get("Policy"), arn, sources) is not None:
                    details.append("its policy does not let every topic it subscribes to deliver")
            except TopologyConflictError as exc:
                details.append(str(exc))
        problem(inspection.QUEUE, plan.name, details)

    planned = {(sub.topic, sub.queue) for sub in topology.subscriptions}
    for topic_arn, queue_arn, subscription_arn in reader.queue_subscriptions():
        queue = queue_arns.get(queue_arn)
        if queue is None:
            continue
        topic = _logical(names.prefix, topic_arn.rsplit(":", 1)[-1])
        name = inspection.subscription_name(topic, queue)
        if subscription_arn == "PendingConfirmation":
            found[(inspection.SUBSCRIPTION, name)] = {}
            problems.append(inspection.Difference(inspection.SUBSCRIPTION, name, "waiting for confirmation"))
            continue
        attributes = reader.subscription_attributes(subscription_arn)
        manifests, details = _filter(attributes.get("FilterPolicy"))
        found[(inspection.SUBSCRIPTION, name)] = {"manifests": manifests}
        if (topic, queue) in planned:
            settings = subscription_settings(manifests)  # the manifests themselves are compared by compare()
            details += _changes(settings, attributes, skip="FilterPolicy")
            problem(inspection.SUBSCRIPTION, name, details)
    return inspection.compare(topology, found, problems)


def _logical(prefix: str, physical: str) -> str:
    """A topic's or queue's name in the plan: the physical name without the prefix."""
    return physical[len(prefix) :] if prefix and physical.startswith(prefix) else physical


def _changes(wanted: dict[Any, str], attributes: dict[str, str], skip: str = "") -> list[str]:
    changes = []
    for key, value in wanted.items():
        if key != skip and not same_attribute(key, attributes.get(key), value):
            changes.append(f"{key}: plan {value}, broker {attributes.get(key, '(not set)')}")
    return changes


def _json_object(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _filter(policy: str | None) -> tuple[tuple[str, ...], list[str]]:
    """The manifests a filter policy lets through, and what else is odd about it."""
    if not policy:
        return (), ["no filter policy: every message on the topic arrives"]
    document = _json_object(policy)
    values = document.get("manifest")
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        return (), [f"filter policy {policy} does not list manifests"]
    others = sorted(set(document) - {"manifest"})
    return tuple(sorted(values)), [f"filter policy also filters on {', '.join(others)}"] if others else []
