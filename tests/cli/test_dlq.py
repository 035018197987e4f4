"""``eventbus dlq``: list, show, replay and purge dead letters on every backend; and the Bus methods."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from eventbus import ConfigurationError, Envelope, wait_until
from eventbus.backends.memory import MemoryBackend
from eventbus.backends.rabbitmq import RabbitMQBackend
from eventbus.backends.rabbitmq import dead_letters as rabbitmq_dead_letters
from eventbus.backends.redis import RedisBackend, from_fields
from eventbus.backends.sqs import SqsBackend
from eventbus.backends.sqs import wire as sqs_wire
from eventbus.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from conftest import App

Cli = Callable[..., tuple[int, str, str]]


def make_dead_letters(app: App, orders: int = 3, payments: int = 1) -> tuple[list[str], list[str]]:
    """Publish messages that fail for good; return their ids (orders, payments) once all are dead letters."""
    module = app.module
    module.failing["on"] = True
    bus = module.bus
    bus.start()
    order_ids = [bus.publish(module.OrderPlaced(f"o-{i}", 100 * i)) for i in range(orders)]
    payment_ids = [bus.publish(module.PaymentTaken(f"p-{i}")) for i in range(payments)]
    wait_until(lambda: len(bus.dead_letters()) == orders + payments, timeout=20, message="dead letters")
    bus.stop(timeout=10)
    return order_ids, payment_ids


def waiting(app: App, queue: str) -> list[Envelope]:
    """What waits on ``queue`` itself (where replayed dead letters go), left there."""
    backend = app.module.bus.backend
    if isinstance(backend, MemoryBackend):
        return backend.broker.messages(queue)
    if isinstance(backend, RabbitMQBackend):
        return rabbitmq_dead_letters.peek(backend.options, queue, 100)
    if isinstance(backend, SqsBackend):
        url = backend.queue_url(queue)
        messages = backend.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"])
        received = messages.get("Messages", [])
        for message in received:
            backend.sqs.change_message_visibility(
                QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
        return [sqs_wire.decode(message, count_attempts=False) for message in received]
    assert isinstance(backend, RedisBackend)
    return [from_fields(fields) for _, fields in backend.redis.xrange(backend.keys.queue(queue))]


def test_list_shows_the_error_headers(cli: Cli, app: App) -> None:
    order_ids, payment_ids = make_dead_letters(app)
    code, out, _ = cli("dlq", "list", app.target)
    assert code == EXIT_OK
    lines = out.splitlines()
    assert "audit-dlq: 1 dead letter, from queue audit" in lines
    assert "payments-dlq: 3 dead letters, from queue payments" in lines
    for message_id in order_ids:
        (line,) = [line for line in lines if message_id in line]
        assert "  OrderPlaced  " in line
        assert "  handler-failed  attempt 2  " in line
        assert f"{app.name}.charge  builtins.ValueError: card declined for o-" in line
    (line,) = [line for line in lines if payment_ids[0] in line]
    assert "handler-failed  attempt 1" in line
    assert "builtins.RuntimeError: audit log is read-only" in line

    code, out, _ = cli("dlq", "list", app.target, "--queue", "payments", "--limit", "2", "--format", "json")
    assert code == EXIT_OK
    rows = json.loads(out)
    assert len(rows) == 2
    assert {row["queue"] for row in rows} == {"payments"}
    assert rows[0]["message_id"] in order_ids
    assert rows[0]["reason"] == "handler-failed"
    assert rows[0]["error_type"] == "builtins.ValueError"
    assert rows[0]["error_message"].startswith("card declined for o-")
    assert rows[0]["handler"] == f"{app.name}.charge"
    assert rows[0]["attempt"] == "2"
    assert rows[0]["dead_lettered_at"].endswith("Z")
    code, out, _ = cli("dlq", "list", app.target, "--queue", "payments", "--limit", "2")
    assert "payments-dlq: 2 dead letters (the first 2), from queue payments" in out


def test_show_prints_every_header_and_the_body(cli: Cli, app: App) -> None:
    order_ids, _ = make_dead_letters(app, orders=2, payments=0)
    code, out, _ = cli("dlq", "show", app.target, "--id", order_ids[1])
    assert code == EXIT_OK
    assert out.startswith(f"dead letter {order_ids[1]} in payments-dlq (from queue payments)\n")
    for header in ("message-id", "manifest", "correlation-id", "error-reason", "error-type", "error-message"):
        assert f"  {header} " in out
    assert "  error-traceback:\n    Traceback (most recent call last):" in out
    assert 'body (37 bytes, application/json):\n  {\n    "order_id": "o-1",\n    "amount_cents": 100\n  }' in out

    code, out, _ = cli("dlq", "show", app.target, "--id", order_ids[0], "--format", "json")
    shown = json.loads(out)
    assert shown["headers"]["message-id"] == order_ids[0]
    assert shown["headers"]["error-attempt"] == "2"
    assert json.loads(shown["body"]) == {"order_id": "o-0", "amount_cents": 0}

    code, _, err = cli("dlq", "show", app.target, "--id", "0" * 32)
    assert code == EXIT_ERROR
    assert f"no dead letter with id '{'0' * 32}' in audit-dlq, payments-dlq" in err
    assert cli("dlq", "show", app.target)[0] == EXIT_USAGE  # --id is required


def test_replay_keeps_the_ids_resets_the_attempt_and_the_handlers_run_again(cli: Cli, app: App) -> None:
    order_ids, payment_ids = make_dead_letters(app)
    chosen = order_ids[1]
    code, out, _ = cli("dlq", "replay", app.target, "--queue", "payments", "--id", chosen)
    assert code == EXIT_OK
    assert out == f"payments-dlq: replayed 1 dead letter to payments\n  {chosen}\n"
    (back,) = waiting(app, "payments")
    assert back.message_id == chosen
    assert back.attempt == 1
    assert not [name for name in back.headers if name.startswith("error-") or name == "dead-lettered-at"]
    assert back.manifest == "OrderPlaced"
    assert chosen not in [letter.message_id for letter in app.module.bus.dead_letters()]

    module = app.module
    module.failing["on"] = False
    module.bus.start()
    wait_until(lambda: len(module.handled) == 1, timeout=20, message="the replayed message handled")
    message_id, attempt, event = module.handled[0]
    # On SQS the attempt is SQS's receive count, and waiting() received the message once.
    first = 2 if isinstance(module.bus.backend, SqsBackend) else 1
    assert (message_id, attempt, event.order_id) == (chosen, first, "o-1")
    module.bus.stop(timeout=10)

    # No --queue: every queue, at most --limit each, oldest first.
    oldest = [letter.message_id for letter in module.bus.backend.dead_letters("payments", 10)]
    assert sorted(oldest) == sorted([order_ids[0], order_ids[2]])
    code, out, _ = cli("dlq", "replay", app.target, "--limit", "1")
    assert code == EXIT_OK
    assert f"audit-dlq: replayed 1 dead letter to audit\n  {payment_ids[0]}\n" in out
    assert f"payments-dlq: replayed 1 dead letter to payments\n  {oldest[0]}\n" in out
    code, out, _ = cli("dlq", "replay", app.target)
    assert f"payments-dlq: replayed 1 dead letter to payments\n  {oldest[1]}\n" in out
    assert "audit-dlq: replayed 0 dead letters to audit" in out
    assert app.module.bus.dead_letters() == []
    assert [e.message_id for e in waiting(app, "payments")] == oldest

    code, _, err = cli("dlq", "replay", app.target, "--id", "f" * 32)
    assert code == EXIT_ERROR
    assert f"not found among the dead letters: {'f' * 32}" in err


class Terminal(io.StringIO):
    """Standard input that claims to be a terminal, with the user's answer in it."""

    def isatty(self) -> bool:
        return True


def test_purge_asks_or_needs_yes(cli: Cli, app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    make_dead_letters(app, orders=2, payments=1)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, out, err = cli("dlq", "purge", app.target)
    assert code == EXIT_USAGE
    assert "refusing to delete the dead letters of audit-dlq, payments-dlq without --yes" in err
    assert len(app.module.bus.dead_letters()) == 3

    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    code, out, err = cli("dlq", "purge", app.target, "--queue", "payments")
    assert code == EXIT_ERROR
    assert "Delete every dead letter of payments-dlq for good? [y/N]" in out
    assert "nothing deleted" in err
    assert len(app.module.bus.dead_letters()) == 3

    monkeypatch.setattr("sys.stdin", Terminal("y\n"))
    code, out, _ = cli("dlq", "purge", app.target, "--queue", "payments")
    assert code == EXIT_OK
    assert "payments-dlq: deleted 2 dead letters" in out
    assert len(app.module.bus.dead_letters()) == 1

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, out, _ = cli("dlq", "purge", app.target, "--yes")
    assert code == EXIT_OK
    assert out == "audit-dlq: deleted 1 dead letter\npayments-dlq: deleted 0 dead letters\n"
    assert app.module.bus.dead_letters() == []
    # The dead-letter queues are still there for the next ones.
    make_dead_letters(app, orders=1, payments=0)


def test_an_unknown_queue_is_a_usage_error(cli: Cli, app: App) -> None:
    for action in ("list", "replay"):
        code, _, err = cli("dlq", action, app.target, "--queue", "nope")
        assert code == EXIT_USAGE
        assert "'nope' is not a queue of service 'payments' (its queues: audit, payments)" in err


def test_bus_methods(app: App) -> None:
    order_ids, _ = make_dead_letters(app, orders=3, payments=1)
    bus = app.module.bus
    assert bus.purge_dead_letters("audit") == 1
    assert bus.replay_dead_letters("payments", message_ids=[order_ids[1]]) == [order_ids[1]]
    replayed = bus.replay_dead_letters(limit=1)
    assert len(replayed) == 1
    assert replayed[0] in (order_ids[0], order_ids[2])
    assert bus.purge_dead_letters() == 1
    assert bus.dead_letters() == []
    assert sorted(e.message_id for e in waiting(app, "payments")) == sorted([order_ids[1], replayed[0]])
    with pytest.raises(ConfigurationError, match="'nope' is not a queue of service 'payments'"):
        bus.replay_dead_letters("nope")
    with pytest.raises(ConfigurationError, match="'nope' is not a queue of service 'payments'"):
        bus.purge_dead_letters("nope")


def test_a_backend_without_dead_letter_tools(cli: Cli, plain_app: App) -> None:
    app = plain_app
    plain: Any = app.module.plain
    with pytest.raises(ConfigurationError, match=r"the Plain of <Bus service='payments'.*> cannot replay dead letters"):
        plain.replay_dead_letters()
    with pytest.raises(ConfigurationError, match="cannot purge dead letters"):
        plain.purge_dead_letters()
    for args in (("replay",), ("purge", "--yes")):
        code, _, err = cli("dlq", args[0], f"{app.name}:plain", *args[1:])
        assert code == EXIT_ERROR
        assert f"cannot {args[0]} dead letters" in err
        assert err.count("\n") == 1
    assert cli("dlq", "list", f"{app.name}:plain")[0] == EXIT_OK
