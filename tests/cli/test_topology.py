"""``eventbus topology``: print the plan, apply it, and compare it with what the broker has."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from eventbus.cli import EXIT_DIFFERENT, EXIT_ERROR, EXIT_OK

if TYPE_CHECKING:
    from conftest import App

Cli = Callable[..., tuple[int, str, str]]


def test_prints_the_plan_as_text_and_json(cli: Cli, make_app: Callable[..., App]) -> None:
    app = make_app("memory://")
    code, out, _ = cli("topology", app.target)
    assert code == EXIT_OK
    assert out.splitlines() == [
        "service payments",
        "  topic orders",
        "  topic payments",
        "  queue audit -> dead letters audit-dlq",
        "  queue payments -> dead letters payments-dlq",
        "  orders -> payments [OrderPlaced]",
        "  payments -> audit [PaymentTaken]",
    ]
    code, out, _ = cli("topology", app.target, "--format", "json")
    assert code == EXIT_OK
    assert json.loads(out) == json.loads(app.module.bus.topology().to_json())


def test_apply_then_diff_is_in_sync(cli: Cli, app: App) -> None:
    code, out, _ = cli("topology", app.target, "--diff")
    assert code == EXIT_DIFFERENT
    assert "  missing    queue payments" in out
    assert "  missing    subscription orders -> payments" in out
    assert out.rstrip().endswith("extra, 0 different")

    code, out, err = cli("topology", app.target, "--apply")
    assert code == EXIT_OK
    assert out.startswith("service payments\n")
    assert "applied to" in err

    code, out, _ = cli("topology", app.target, "--diff", "--format", "json")
    assert code == EXIT_OK
    assert json.loads(out) == {"service": "payments", "missing": [], "extra": [], "different": [], "in_sync": True}
    # --apply is idempotent
    assert cli("topology", app.target, "--apply")[0] == EXIT_OK
    assert cli("topology", app.target, "--diff")[0] == EXIT_OK


@pytest.mark.redis
def test_diff_on_a_partially_provisioned_redis_names_what_is_missing_extra_and_different(
    cli: Cli, make_app: Callable[..., App], redis_url: str, redis_prefix: str
) -> None:
    app = make_app(f"{redis_url}?prefix={redis_prefix}")
    assert cli("topology", app.target, "--apply")[0] == EXIT_OK
    client = redis.Redis.from_url(redis_url)
    # Someone deleted the audit queue's dead letters stream, a manifest vanished from the
    # payments routes, a route to a topic no handler takes was added, and a group is gone.
    client.delete(f"{redis_prefix}queue:audit-dlq")
    client.srem(f"{redis_prefix}routes:payments", "orders OrderPlaced")
    client.sadd(f"{redis_prefix}routes:payments", "orders OrderRefunded", "returns ReturnOpened")
    client.xgroup_destroy(f"{redis_prefix}topic:payments", "audit")
    client.set(f"{redis_prefix}queue:payments-dlq", "not a stream")
    keys_before = sorted(client.scan_iter(match=f"{redis_prefix}*"))

    code, out, _ = cli("topology", app.target, "--diff")
    assert code == EXIT_DIFFERENT
    assert out.splitlines() == [
        "service payments",
        "  missing    dead-letter queue audit-dlq",
        "  missing    subscription payments -> audit",
        "  extra      subscription returns -> payments: manifests: ReturnOpened",
        "  different  dead-letter queue payments-dlq: key is a string, not a stream",
        "  different  subscription orders -> payments: manifests: plan only OrderPlaced; broker only OrderRefunded",
        "out of sync: 2 missing, 1 extra, 2 different",
    ]
    code, out, _ = cli("topology", app.target, "--diff", "--format", "json")
    report = json.loads(out)
    assert report["in_sync"] is False
    assert report["missing"] == [
        {"kind": "dead-letter queue", "name": "audit-dlq", "detail": ""},
        {"kind": "subscription", "name": "payments -> audit", "detail": ""},
    ]
    assert sorted(client.scan_iter(match=f"{redis_prefix}*")) == keys_before, "--diff changed something"

    client.delete(f"{redis_prefix}queue:payments-dlq")
    assert cli("topology", app.target, "--apply")[0] == EXIT_OK
    code, out, _ = cli("topology", app.target, "--diff")
    # Routes are a union (two versions of a service may run side by side): apply never removes one.
    assert code == EXIT_DIFFERENT
    assert "missing" not in out.replace("0 missing", "")
    assert "  extra      subscription returns -> payments: manifests: ReturnOpened" in out
    assert "broker only OrderRefunded" in out
    client.close()


def test_diff_on_a_backend_that_cannot_inspect_exits_1(cli: Cli, plain_app: App) -> None:
    app = plain_app
    code, out, err = cli("topology", f"{app.name}:plain", "--diff")
    assert code == EXIT_ERROR
    assert out == ""
    assert (
        err == "eventbus topology: --diff: the Plain behind memory:// cannot look at what the broker has "
        "(it does not implement inspect())\n"
    )
    assert cli("topology", f"{app.name}:plain", "--apply")[0] == EXIT_OK


@pytest.mark.rabbitmq
def test_diff_on_rabbitmq_without_rabbitmqctl_says_what_it_needs(
    cli: Cli, make_app: Callable[..., App], rabbitmq_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    app = make_app(rabbitmq_url)
    with monkeypatch.context() as patch:  # undone before the fixtures need rabbitmqctl again
        patch.setenv("PATH", str(tmp_path))  # no rabbitmqctl here
        code, out, err = cli("topology", app.target, "--diff")
    assert code == EXIT_ERROR
    assert out == ""
    assert err.startswith("eventbus topology: --diff on RabbitMQ reads the broker's listings with rabbitmqctl, ")
    assert "run it on the broker's host" in err
    assert "guest:guest" not in err
    assert err.count("\n") == 1
