"""What a RabbitMQ broker has, compared with a plan (``eventbus topology --diff``).

Over AMQP a client can learn whether an exchange or a queue exists (a
passive declare), but not a queue's arguments nor any binding. The broker's
own listings tell both, so the comparison reads them with ``rabbitmqctl``
(``list_exchanges``, ``list_queues``, ``list_bindings`` with ``--formatter
json``), which needs no plugin. It must run where ``rabbitmqctl`` reaches
the broker's node (its host, or with ``RABBITMQ_NODENAME`` and the Erlang
cookie), and it checks first that the node it reaches belongs to the
cluster the URL connects to. Nothing is declared, bound or changed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import pika
import pika.exceptions

from eventbus import inspection
from eventbus.backends import redact_url
from eventbus.backends.rabbitmq.options import BrokerUnavailableError, Options
from eventbus.backends.rabbitmq.topology import Resources, retry_queue
from eventbus.errors import EventbusError
from eventbus.topology import Topology

#: The kind under which a retry queue of a rung no longer on the ladder is reported (as extra).
RETRY_QUEUE = "retry queue"

#: Seconds one ``rabbitmqctl`` call may take.
_TIMEOUT = 60.0

# The arguments that name a queue's dead-letter target: reported as its ``dead_letter`` setting.
_DEAD_LETTER_ARGUMENTS = ("x-dead-letter-exchange", "x-dead-letter-routing-key")


class InspectionError(EventbusError):
    """The broker's listings cannot be read from here (no ``rabbitmqctl``, or it reaches another broker)."""


@attrs.frozen
class QueueState:
    """A queue as the broker lists it."""

    durable: bool
    type: str
    arguments: Mapping[str, Any]


@attrs.frozen
class Listing:
    """The exchanges, queues and bindings of one vhost (the default exchange's bindings left out)."""

    exchanges: Mapping[str, tuple[str, bool]]  # name -> (type, durable)
    queues: Mapping[str, QueueState]
    bindings: tuple[tuple[str, str, str], ...]  # (exchange, queue, routing key)


def read(options: Options, command: str = "rabbitmqctl") -> Listing:
    """List the URL's vhost with ``command`` (``rabbitmqctl``), after checking it reaches the URL's broker."""
    where = redact_url(options.url)
    executable = shutil.which(command)
    if executable is None:
        raise InspectionError(
            f"--diff on RabbitMQ reads the broker's listings with {command}, which is not on PATH here "
            "(AMQP cannot list bindings or read queue arguments); run it on the broker's host, "
            "or where rabbitmqctl reaches the node (RABBITMQ_NODENAME and the Erlang cookie)"
        )
    parameters = options.connection_parameters("inspect")
    try:
        connection = pika.BlockingConnection(parameters)
    except pika.exceptions.AMQPError as exc:
        raise BrokerUnavailableError(f"cannot connect to {where}: {exc!r}") from exc
    try:
        name = connection._impl.server_properties.get("cluster_name") or ""
    finally:
        if connection.is_open:
            connection.close()
    ours = name.decode() if isinstance(name, bytes) else str(name)
    vhost = ["-p", parameters.virtual_host]
    binding_columns = ["source_name", "source_kind", "destination_name", "destination_kind", "routing_key"]
    # One rabbitmqctl call takes about half a second (it starts a VM): run them side by side.
    status, exchange_rows, queue_rows, binding_rows = _run_all(
        executable,
        [
            ["cluster_status"],
            ["list_exchanges", *vhost, "name", "type", "durable"],
            ["list_queues", *vhost, "name", "durable", "type", "arguments"],
            ["list_bindings", *vhost, *binding_columns],
        ],
    )
    theirs = str(status.get("cluster_name", "")) if isinstance(status, dict) else ""
    if not ours or ours != theirs:
        raise InspectionError(
            f"{command} here reaches cluster {theirs or '(unknown)'}, but {where} is cluster {ours or '(unknown)'}; "
            "run it on that broker's host, or point rabbitmqctl at one of its nodes (RABBITMQ_NODENAME)"
        )
    exchanges = {str(row["name"]): (str(row["type"]), bool(row["durable"])) for row in exchange_rows}
    queues = {
        str(row["name"]): QueueState(
            durable=bool(row["durable"]),
            type=str(row.get("type") or "classic"),
            arguments={str(a[0]): a[2] for a in row.get("arguments") or [] if len(a) == 3},
        )
        for row in queue_rows
    }
    bindings = tuple(
        (str(row["source_name"]), str(row["destination_name"]), str(row["routing_key"]))
        for row in binding_rows
        if row["source_name"] and row["source_kind"] == "exchange" and row["destination_kind"] == "queue"
    )
    return Listing(exchanges, queues, bindings)


def _run_all(executable: str, calls: Sequence[Sequence[str]]) -> list[Any]:
    """``rabbitmqctl -q ARGUMENTS --formatter json`` for each of ``calls`` at once; their parsed outputs."""
    running: list[tuple[Sequence[str], subprocess.Popen[str]]] = []
    try:
        for arguments in calls:
            command = [executable, "-q", *arguments, "--formatter", "json"]
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # noqa: S603
            running.append((arguments, process))
        return [_result(arguments, process) for arguments, process in running]
    except OSError as exc:
        raise InspectionError(f"cannot run {executable}: {exc}") from exc
    finally:
        for _, process in running:
            if process.poll() is None:
                process.kill()
                process.wait()


def _result(arguments: Sequence[str], process: subprocess.Popen[str]) -> Any:
    try:
        out, err = process.communicate(timeout=_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise InspectionError(f"rabbitmqctl {arguments[0]} did not answer within {_TIMEOUT:g}s") from exc
    if process.returncode != 0:
        reason = " ".join((err or out).split())[:500]
        raise InspectionError(f"rabbitmqctl {arguments[0]} failed (exit {process.returncode}): {reason}")
    try:
        return json.loads(out or "[]")
    except ValueError as exc:
        raise InspectionError(f"rabbitmqctl {arguments[0]} printed something that is not JSON: {exc}") from exc


def compare(topology: Topology, plan: Resources, ladder: Sequence[float], found: Listing) -> inspection.TopologyReport:
    """The report of what ``found`` lacks, has in excess or has otherwise than ``plan`` (the topology's)."""
    declared = {queue.name: queue.arguments for queue in plan.queues}
    resources: inspection.Resources = {}
    problems: list[inspection.Difference] = []
    for topic in topology.topics:
        exchange = found.exchanges.get(topic)
        if exchange is None:
            continue
        resources[(inspection.TOPIC, topic)] = {}
        kind, durable = exchange
        if kind != "topic" or not durable:
            what = f"a {'durable' if durable else 'transient'} {kind} exchange"
            problems.append(
                inspection.Difference(inspection.TOPIC, topic, f"{what}; eventbus needs a durable topic exchange")
            )
    for queue in topology.queues:
        state = found.queues.get(queue.name)
        if state is not None:
            resources[(inspection.QUEUE, queue.name)] = {"dead_letter": _dead_letter(state.arguments)}
            details = _argument_changes(declared[queue.name], state, skip=_DEAD_LETTER_ARGUMENTS)
            details += _retry_changes(queue.name, ladder, declared, found.queues)
            if details:
                problems.append(inspection.Difference(inspection.QUEUE, queue.name, "; ".join(details)))
            for name, leftover in sorted(found.queues.items()):
                if name not in declared and _is_retry_queue(name, queue.name):
                    ttl = leftover.arguments.get("x-message-ttl")
                    resources[(RETRY_QUEUE, name)] = {} if ttl is None else {"x-message-ttl": ttl}
        state = found.queues.get(queue.dead_letter)
        if state is not None:
            resources[(inspection.DEAD_LETTER_QUEUE, queue.dead_letter)] = {}
            details = _argument_changes(declared[queue.dead_letter], state)
            if details:
                kind = inspection.DEAD_LETTER_QUEUE
                problems.append(inspection.Difference(kind, queue.dead_letter, "; ".join(details)))
    ours = {queue.name for queue in topology.queues}
    keys: dict[tuple[str, str], set[str]] = {}
    for source, queue_name, routing_key in found.bindings:
        if queue_name in ours:
            keys.setdefault((source, queue_name), set()).add(routing_key)
    for (source, queue_name), manifests in keys.items():
        name = inspection.subscription_name(source, queue_name)
        resources[(inspection.SUBSCRIPTION, name)] = {"manifests": tuple(sorted(manifests))}
    return inspection.compare(topology, resources, problems)


def _dead_letter(arguments: Mapping[str, Any]) -> str:
    """Where a queue dead-letters to: a queue name (through the default exchange), or how else."""
    exchange = arguments.get("x-dead-letter-exchange")
    key = arguments.get("x-dead-letter-routing-key")
    if exchange is None:
        return "(none)"
    if exchange == "" and key is not None:
        return str(key)
    return f"exchange {exchange!r}" + ("" if key is None else f" with key {key!r}")


def _argument_changes(wanted: Mapping[str, Any], state: QueueState, skip: Sequence[str] = ()) -> list[str]:
    actual = {**state.arguments, "x-queue-type": state.type}
    changes = [] if state.durable else ["not durable"]
    for key in sorted((wanted.keys() | actual.keys()) - set(skip)):
        if key == "x-queue-type" and key not in wanted:
            continue
        expected, current = wanted.get(key), actual.get(key)
        if expected != current:
            changes.append(f"{key}: plan {_show(expected)}, broker {_show(current)}")
    return changes


def _retry_changes(
    queue: str, ladder: Sequence[float], declared: Mapping[str, Mapping[str, Any]], queues: Mapping[str, QueueState]
) -> list[str]:
    changes = []
    for step in ladder:
        name = retry_queue(queue, step)
        state = queues.get(name)
        if state is None:
            changes.append(f"retry queue {name} missing")
            continue
        changes += [f"retry queue {name}: {change}" for change in _argument_changes(declared[name], state)]
    return changes


def _is_retry_queue(name: str, queue: str) -> bool:
    return re.fullmatch(re.escape(queue) + r"-retry-\d+(ms|s|m|h)", name) is not None


def _show(value: Any) -> str:
    return "(not set)" if value is None else repr(value) if value == "" else str(value)
