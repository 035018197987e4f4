"""The command line itself: usage errors, targets, exit codes, an unreachable broker with its password hidden."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from eventbus.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from conftest import App

Cli = Callable[..., tuple[int, str, str]]


def test_help_and_usage_errors(cli: Cli) -> None:
    assert cli("--help")[0] == EXIT_OK
    for args in [(), ("frobnicate",), ("topology",), ("dlq",), ("dlq", "list"), ("run", "x:bus", "--concurrency", "0")]:
        code, _, err = cli(*args)
        assert code == EXIT_USAGE, args
        assert "usage: eventbus" in err
    code, _, err = cli("run", "x:bus", "--concurrency", "many")
    assert code == EXIT_USAGE
    assert "'many' is not a whole number" in err


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("not a target", "is not a target; write module.path:attribute"),
        ("no_such_module_here:bus", "cannot import 'no_such_module_here': no such module"),
        ("broken_app:bus", "importing 'broken_app' failed: ZeroDivisionError: division by zero"),
        (
            "needs_missing:bus",
            "importing 'needs_missing' failed: ModuleNotFoundError: No module named 'nowhere_to_be_found'",
        ),
        ("plain_app:nothing", "'plain_app' has no attribute 'nothing'"),
        ("plain_app:value", "plain_app:value is a int, not an eventbus.Bus"),
    ],
)
def test_a_target_that_is_not_a_bus_is_a_usage_error_in_one_line(
    cli: Cli, workdir: Path, target: str, says: str
) -> None:
    (workdir / "broken_app.py").write_text("1 / 0\n")
    (workdir / "needs_missing.py").write_text("import nowhere_to_be_found\n")
    (workdir / "plain_app.py").write_text("value = 3\n")
    code, out, err = cli("topology", target)
    assert code == EXIT_USAGE
    assert out == ""
    assert says in err
    assert err.count("\n") == 1, err


def test_the_attribute_defaults_to_bus_and_may_be_dotted(cli: Cli, make_app: Callable[..., App]) -> None:
    app = make_app("memory://", extra="class holder:\n    bus = bus\n")
    for target in (app.name, f"{app.name}:bus", f"{app.name}:holder.bus"):
        code, out, _ = cli("topology", target)
        assert code == EXIT_OK
        assert out.startswith("service payments\n")


@pytest.mark.parametrize(
    "args",
    [
        ("topology", "--diff"),
        ("topology", "--apply"),
        ("dlq", "list"),
        ("dlq", "show", "--id", "abc"),
        ("dlq", "replay"),
        ("dlq", "purge", "--yes"),
        ("run",),
    ],
)
def test_an_unreachable_broker_is_one_line_naming_the_url_without_the_password(
    cli: Cli, make_app: Callable[..., App], free_port: int, args: tuple[str, ...]
) -> None:
    app = make_app(f"redis://:hunter2@127.0.0.1:{free_port}/0")
    command = args[:2] if args[0] == "dlq" else args[:1]
    code, out, err = cli(*command, app.target, *args[len(command) :])
    assert code == EXIT_ERROR
    lines = [line for line in err.splitlines() if line.startswith("eventbus ")]
    assert len(lines) == 1, err
    assert f"redis://:***@127.0.0.1:{free_port}/0" in lines[0]
    assert "hunter2" not in out + err
    assert "Traceback" not in err


def test_a_bad_url_hides_the_password_too(cli: Cli, make_app: Callable[..., App]) -> None:
    app = make_app("nosuchscheme://admin:hunter2@broker:1234/")
    code, _, err = cli("topology", app.target)
    assert code == EXIT_USAGE
    assert "no backend for 'nosuchscheme://admin:***@broker:1234/'" in err
    assert "hunter2" not in err


def test_console_script_and_python_dash_m(workdir: Path, make_app: Callable[..., App]) -> None:
    app = make_app("memory://")
    script = Path(sys.executable).with_name("eventbus")
    assert script.exists(), "the console script is missing: pip install -e . again"
    for command in ([str(script)], [sys.executable, "-m", "eventbus"]):
        done = subprocess.run(
            [*command, "topology", app.target, "--format", "json"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert '"service": "payments"' in done.stdout
        done = subprocess.run([*command, "topology"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert "usage: eventbus topology" in done.stderr
