"""Comparing a topology with what a broker has: missing, extra, different.

A topology is broken down into resources, each keyed by ``(kind, name)``
with a few settings: a ``topic``; a ``queue`` (settings ``dead_letter`` and
``fifo``); its ``dead-letter queue``; a ``subscription`` named
``"topic -> queue"`` (setting ``manifests``). A backend that can look
(see :class:`~eventbus.backends.base.TopologyInspector`) reports the same
resources as it finds them, with the settings it can observe, and
:func:`compare` tells the differences. Nothing is changed on the broker.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from eventbus.topology import Topology

TOPIC = "topic"
QUEUE = "queue"
DEAD_LETTER_QUEUE = "dead-letter queue"
SUBSCRIPTION = "subscription"

#: ``(kind, name)`` -> the settings of that resource.
Resources = dict[tuple[str, str], dict[str, Any]]


def subscription_name(topic: str, queue: str) -> str:
    """The resource name of the subscription of ``queue`` to ``topic``."""
    return f"{topic} -> {queue}"


def resources(topology: Topology) -> Resources:
    """The resources ``topology`` needs, with their settings."""
    wanted: Resources = {(TOPIC, topic): {} for topic in topology.topics}
    for plan in topology.queues:
        wanted[(QUEUE, plan.name)] = {"dead_letter": plan.dead_letter, "fifo": plan.fifo}
        wanted[(DEAD_LETTER_QUEUE, plan.dead_letter)] = {}
    for sub in topology.subscriptions:
        wanted[(SUBSCRIPTION, subscription_name(sub.topic, sub.queue))] = {"manifests": tuple(sorted(sub.manifests))}
    return wanted


@attrs.frozen
class Difference:
    """One resource that is missing, extra or different; ``detail`` says how."""

    kind: str
    name: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.name}" + (f": {self.detail}" if self.detail else "")


@attrs.frozen
class TopologyReport:
    """What a broker has compared with what a service's topology needs.

    ``missing``: needed but not there (``--apply`` creates them);
    ``extra``: there, tied to the service's queues, but not in the plan (for
    instance a subscription left over from a handler that was removed);
    ``different``: there with other settings than the plan's.
    """

    service: str
    missing: tuple[Difference, ...] = ()
    extra: tuple[Difference, ...] = ()
    different: tuple[Difference, ...] = ()

    @property
    def in_sync(self) -> bool:
        """Whether the broker has exactly what the plan needs."""
        return not (self.missing or self.extra or self.different)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        data = attrs.asdict(self)
        data["in_sync"] = self.in_sync
        return data

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        lines = [f"service {self.service}"]
        for label, entries in (("missing", self.missing), ("extra", self.extra), ("different", self.different)):
            lines += [f"  {label:<9}  {entry}" for entry in entries]
        if self.in_sync:
            lines.append("in sync: the broker has what the plan needs, and nothing else of this service")
        else:
            counts = f"{len(self.missing)} missing, {len(self.extra)} extra, {len(self.different)} different"
            lines.append(f"out of sync: {counts}")
        return "\n".join(lines)


def compare(
    topology: Topology, found: Mapping[tuple[str, str], Mapping[str, Any]], problems: Iterable[Difference] = ()
) -> TopologyReport:
    """Compare what ``topology`` needs with the resources a backend ``found``.

    Only the settings present on both sides are compared, so a backend
    reports just what it can observe. ``problems`` are differences the
    backend noticed itself (a key of the wrong type, say); they are listed
    as different.
    """
    wanted = resources(topology)
    missing = [Difference(kind, name) for kind, name in wanted if (kind, name) not in found]
    extra = [
        Difference(kind, name, _describe(found[(kind, name)])) for kind, name in found if (kind, name) not in wanted
    ]
    different = list(problems)
    for key, settings in wanted.items():
        if key in found:
            detail = _changes(settings, found[key])
            if detail:
                different.append(Difference(key[0], key[1], detail))
    order = {kind: i for i, kind in enumerate((TOPIC, QUEUE, DEAD_LETTER_QUEUE, SUBSCRIPTION))}

    def ordered(entries: list[Difference]) -> tuple[Difference, ...]:
        return tuple(sorted(entries, key=lambda d: (order.get(d.kind, len(order)), d.kind, d.name)))

    return TopologyReport(topology.service, ordered(missing), ordered(extra), ordered(different))


def _describe(settings: Mapping[str, Any]) -> str:
    return "; ".join(f"{key}: {_show(value)}" for key, value in sorted(settings.items()))


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list, set, frozenset)):
        return ", ".join(str(v) for v in value) or "none"
    return str(value)


def _changes(wanted: Mapping[str, Any], found: Mapping[str, Any]) -> str:
    changes = []
    for key in sorted(wanted.keys() & found.keys()):
        expected, actual = wanted[key], found[key]
        if isinstance(expected, tuple) and isinstance(actual, (tuple, list, set, frozenset)):
            lacking = sorted(set(expected) - set(actual))
            surplus = sorted(set(actual) - set(expected))
            parts = [f"plan only {', '.join(lacking)}"] if lacking else []
            parts += [f"broker only {', '.join(surplus)}"] if surplus else []
            if parts:
                changes.append(f"{key}: {'; '.join(parts)}")
        elif expected != actual:
            changes.append(f"{key}: plan {_show(expected)}, broker {_show(actual)}")
    return "; ".join(changes)
