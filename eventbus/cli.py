"""The ``eventbus`` command: run a service, show and apply its topology, export AsyncAPI, tend dead letters.

Every command takes a target ``module.path:attribute`` that names a
:class:`~eventbus.Bus` (``:bus`` when left out); the module is imported with
the current directory on ``sys.path``, as ``python -m`` would. See
``docs/cli.md``.

Exit codes: 0 done; 1 the broker failed, refused or lacks the feature;
2 bad usage (arguments, a target that is not a Bus); 3 ``topology --diff``
found differences.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from eventbus import asyncapi
from eventbus import envelope as wire
from eventbus.backends import redact_url
from eventbus.backends.base import TopologyInspector
from eventbus.bus import URL_VARIABLE, Bus
from eventbus.envelope import Envelope
from eventbus.errors import EventbusError
from eventbus.topology import QueuePlan
from eventbus.yaml_writer import to_yaml

log = logging.getLogger("eventbus.cli")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DIFFERENT = 3

#: How many dead letters per queue ``dlq show`` looks through for an id, unless ``--limit`` says.
SHOW_SCAN = 10_000


class CommandError(Exception):
    """A command cannot go on: the message is printed as one line and ``code`` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage error or the help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    ours = logging.getLogger("eventbus")
    previous = ours.level
    _configure_logging(args)
    secrets = _Secrets(os.environ.get(URL_VARIABLE, ""))
    try:
        bus = load_bus(args.target)
        secrets.add(bus.url)
        command: Callable[[Bus, argparse.Namespace], int] = args.handler
        try:
            return command(bus, args)
        finally:
            with contextlib.suppress(Exception):
                bus.backend.close()
    except CommandError as exc:
        name = " ".join(filter(None, [args.command, getattr(args, "action", None)]))
        print(f"eventbus {name}: {secrets.hide(str(exc))}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"eventbus {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        ours.setLevel(previous)


# -- arguments --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``eventbus`` command."""
    parser = argparse.ArgumentParser(
        prog="eventbus",
        description="Run an eventbus service and look after its broker resources.",
        epilog="A TARGET is module.path:attribute naming a Bus, e.g. shop.payments:bus.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("target", metavar="TARGET", help="module.path:attribute naming a Bus (':bus' by default)")
    common.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    common.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)

    run = commands.add_parser("run", parents=[common], help="run the service's workers in the foreground")
    run.add_argument("--concurrency", type=_positive, metavar="N", help="handler threads per queue")
    run.add_argument("--prefetch", type=_positive, metavar="N", help="messages taken ahead per queue (2 x N)")
    run.set_defaults(handler=run_command)

    topology = commands.add_parser("topology", parents=[common], help="print, check or apply the broker topology")
    topology.add_argument("--format", choices=["text", "json"], default="text")
    action = topology.add_mutually_exclusive_group()
    action.add_argument("--apply", action="store_true", help="create what is missing on the broker")
    action.add_argument("--diff", action="store_true", help="compare with the broker (exit 3 when different)")
    topology.set_defaults(handler=topology_command)

    spec = commands.add_parser("asyncapi", parents=[common], help="write an AsyncAPI 3.0 document")
    spec.add_argument("-o", "--output", metavar="FILE", help="YAML, or JSON when FILE ends in .json (default: stdout)")
    spec.add_argument("--format", choices=["yaml", "json"], help="the format on stdout (default yaml)")
    spec.add_argument("--title", help="the document title (default: the service name)")
    spec.add_argument("--api-version", default="1.0.0", help="the version of the API described (default 1.0.0)")
    spec.set_defaults(handler=asyncapi_command)

    dlq = commands.add_parser("dlq", help="list, show, replay or purge dead letters")
    actions = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    where = argparse.ArgumentParser(add_help=False, parents=[common])
    where.add_argument("--queue", metavar="Q", help="one of the service's queues (default: all of them)")

    listing = actions.add_parser("list", parents=[where], help="dead letters with their error headers")
    listing.add_argument("--limit", type=_positive, default=100, metavar="N", help="per queue (default 100)")
    listing.add_argument("--format", choices=["text", "json"], default="text")
    listing.set_defaults(handler=dlq_list_command)

    show = actions.add_parser("show", parents=[where], help="one dead letter in full: headers and body")
    show.add_argument("--id", required=True, metavar="MESSAGE_ID", help="the message id (see dlq list)")
    show.add_argument("--limit", type=_positive, default=SHOW_SCAN, metavar="N", help="dead letters searched per queue")
    show.add_argument("--format", choices=["text", "json"], default="text")
    show.set_defaults(handler=dlq_show_command)

    replay = actions.add_parser("replay", parents=[where], help="move dead letters back to their queue")
    replay.add_argument("--limit", type=_positive, metavar="N", help="at most N per queue, oldest first")
    replay.add_argument("--id", action="append", metavar="MESSAGE_ID", help="only this message (repeatable)")
    replay.set_defaults(handler=dlq_replay_command)

    purge = actions.add_parser("purge", parents=[where], help="delete dead letters for good")
    purge.add_argument("--yes", action="store_true", help="do not ask (required when stdin is not a terminal)")
    purge.set_defaults(handler=dlq_purge_command)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _configure_logging(args: argparse.Namespace) -> None:
    """Log to stderr: eventbus at the chosen level, other libraries' warnings and errors."""
    level = args.log_level or ("DEBUG" if args.verbose else "INFO" if args.command == "run" else "WARNING")
    logging.basicConfig(format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("eventbus").setLevel(level)


# -- the target -----------------------------------------------------------------------


def load_bus(target: str) -> Bus:
    """Import ``module.path:attribute`` (attribute ``bus`` by default) and check that it is a Bus."""
    module_name, _, attribute = target.partition(":")
    attribute = attribute or "bus"
    names = [*module_name.split("."), *attribute.split(".")]
    if not all(name.isidentifier() for name in names):
        raise CommandError(f"{target!r} is not a target; write module.path:attribute, e.g. shop.app:bus", EXIT_USAGE)
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        found: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(f"{exc.name}.")):
            raise CommandError(
                f"cannot import {module_name!r}: no such module (run from the directory that contains it)", EXIT_USAGE
            ) from None
        raise CommandError(f"importing {module_name!r} failed: {_one_line(exc)}", EXIT_USAGE) from exc
    except Exception as exc:
        log.debug("importing %s failed", module_name, exc_info=True)
        raise CommandError(f"importing {module_name!r} failed: {_one_line(exc)}", EXIT_USAGE) from exc
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise CommandError(f"{module_name!r} has no attribute {attribute!r}", EXIT_USAGE) from None
    if not isinstance(found, Bus):
        raise CommandError(f"{target} is a {type(found).__name__}, not an eventbus.Bus", EXIT_USAGE)
    return found


class _Secrets:
    """Passwords of the URLs in play, to be hidden from anything printed."""

    def __init__(self, *urls: str) -> None:
        self._words: set[str] = set()
        for url in urls:
            self.add(url)

    def add(self, url: str) -> None:
        with contextlib.suppress(ValueError):
            password = urlsplit(url).password
            if password:
                self._words.update({password, quote(password, safe="")})

    def hide(self, text: str) -> str:
        for word in sorted(self._words, key=len, reverse=True):
            text = text.replace(word, "***")
        return text


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def _broker(bus: Bus) -> Iterator[None]:
    """Turn whatever the broker raises into one line that names it (password hidden)."""
    where = redact_url(bus.url)
    try:
        yield
    except (CommandError, KeyboardInterrupt):
        raise
    except EventbusError as exc:
        text = " ".join(str(exc).split())
        raise CommandError(text if where in text else f"{text} (broker {where})") from exc
    except Exception as exc:
        log.debug("broker call failed", exc_info=True)
        raise CommandError(f"the broker at {where} failed: {_one_line(exc)}") from exc


def _queues(bus: Bus, name: str | None) -> list[QueuePlan]:
    plans = list(bus.topology().queues)
    if name is None:
        if not plans:
            raise CommandError(f"service {bus.service!r} has no queues: it has no handlers", EXIT_USAGE)
        return plans
    for plan in plans:
        if plan.name == name:
            return [plan]
    known = ", ".join(plan.name for plan in plans) or "none"
    raise CommandError(f"{name!r} is not a queue of service {bus.service!r} (its queues: {known})", EXIT_USAGE)


# -- run --------------------------------------------------------------------------------


def run_command(bus: Bus, args: argparse.Namespace) -> int:
    """Run the workers until SIGINT or SIGTERM."""
    if args.concurrency is not None:
        bus.concurrency = args.concurrency
        bus.prefetch = args.prefetch or 2 * args.concurrency
    elif args.prefetch is not None:
        bus.prefetch = args.prefetch
    topology = bus.topology()
    if not topology.queues:
        raise CommandError(f"service {bus.service!r} has no handlers: nothing to run", EXIT_USAGE)
    log.info("%s on %s, %d thread(s) per queue", bus.service, redact_url(bus.url), bus.concurrency)
    for line in str(topology).splitlines():
        log.info("%s", line)
    with _broker(bus):
        bus.run()
    log.info("%s stopped", bus.service)
    return EXIT_OK


# -- topology ---------------------------------------------------------------------------


def topology_command(bus: Bus, args: argparse.Namespace) -> int:
    """Print the plan; with --diff compare it with the broker; with --apply provision it."""
    topology = bus.topology()
    if args.diff:
        backend = bus.backend
        if not isinstance(backend, TopologyInspector):
            raise CommandError(
                f"--diff: the {type(backend).__name__} behind {redact_url(bus.url)} cannot look at what the "
                "broker has (it does not implement inspect())"
            )
        with _broker(bus):
            report = backend.inspect(topology)
        print(report.to_json() if args.format == "json" else report)
        return EXIT_OK if report.in_sync else EXIT_DIFFERENT
    print(topology.to_json() if args.format == "json" else topology)
    if args.apply:
        with _broker(bus):
            bus.provision()
        print(f"applied to {redact_url(bus.url)}", file=sys.stderr)
    return EXIT_OK


# -- asyncapi ---------------------------------------------------------------------------


def asyncapi_command(bus: Bus, args: argparse.Namespace) -> int:
    """Write the AsyncAPI document, as YAML or JSON."""
    document = asyncapi.document(bus, title=args.title, version=args.api_version)
    to_file = args.output not in (None, "-")
    as_json = args.format == "json" or (to_file and args.output.lower().endswith(".json"))
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n" if as_json else to_yaml(document)
    if not to_file:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot write {args.output}: {exc.strerror or exc}") from exc
    print(f"wrote {args.output}", file=sys.stderr)
    return EXIT_OK


# -- dead letters -------------------------------------------------------------------------


def dlq_list_command(bus: Bus, args: argparse.Namespace) -> int:
    """One line per dead letter, with its error headers."""
    found: list[tuple[QueuePlan, list[Envelope]]] = []
    with _broker(bus):
        for plan in _queues(bus, args.queue):
            found.append((plan, bus.backend.dead_letters(plan.name, args.limit)))
    if args.format == "json":
        rows = [_summary(plan, letter) for plan, letters in found for letter in letters]
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return EXIT_OK
    for plan, letters in found:
        more = f" (the first {args.limit})" if len(letters) >= args.limit else ""
        print(f"{plan.dead_letter}: {_count(len(letters), 'dead letter')}{more}, from queue {plan.name}")
        for letter in letters:
            row = _summary(plan, letter)
            error = ": ".join(filter(None, [row["error_type"], _first_line(row["error_message"])]))
            fields = [
                row["message_id"],
                row["manifest"] or "(no manifest)",
                row["dead_lettered_at"] or "-",
                row["reason"] or "-",
                f"attempt {row['attempt'] or '?'}",
                row["handler"] or "-",
                error,
            ]
            print("  " + "  ".join(filter(None, fields)))
    return EXIT_OK


def dlq_show_command(bus: Bus, args: argparse.Namespace) -> int:
    """One dead letter in full: every header and the body."""
    plans = _queues(bus, args.queue)
    with _broker(bus):
        for plan in plans:
            for letter in bus.backend.dead_letters(plan.name, args.limit):
                if letter.message_id == args.id:
                    _show(plan, letter, args.format)
                    return EXIT_OK
    names = ", ".join(plan.dead_letter for plan in plans)
    raise CommandError(f"no dead letter with id {args.id!r} in {names} (searched the first {args.limit} of each)")


def dlq_replay_command(bus: Bus, args: argparse.Namespace) -> int:
    """Move dead letters back to their queue: same message id, attempt 1, no error headers."""
    wanted = None if args.id is None else set(args.id)
    replayed: list[str] = []
    with _broker(bus):
        for plan in _queues(bus, args.queue):
            moved = bus.replay_dead_letters(plan.name, limit=args.limit, message_ids=wanted)
            replayed += moved
            print(f"{plan.dead_letter}: replayed {_count(len(moved), 'dead letter')} to {plan.name}")
            for message_id in moved:
                print(f"  {message_id}")
    missing = sorted(wanted - set(replayed)) if wanted is not None else []
    if missing:
        raise CommandError(f"not found among the dead letters: {', '.join(missing)}")
    return EXIT_OK


def dlq_purge_command(bus: Bus, args: argparse.Namespace) -> int:
    """Delete dead letters for good, after confirmation."""
    plans = _queues(bus, args.queue)
    names = ", ".join(plan.dead_letter for plan in plans)
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError(
                f"refusing to delete the dead letters of {names} without --yes (stdin is not a terminal to ask)",
                EXIT_USAGE,
            )
        if input(f"Delete every dead letter of {names} for good? [y/N] ").strip().lower() not in ("y", "yes"):
            raise CommandError("nothing deleted")
    with _broker(bus):
        for plan in plans:
            print(f"{plan.dead_letter}: deleted {_count(bus.purge_dead_letters(plan.name), 'dead letter')}")
    return EXIT_OK


def _summary(plan: QueuePlan, letter: Envelope) -> dict[str, Any]:
    headers = letter.headers
    return {
        "queue": plan.name,
        "dead_letter_queue": plan.dead_letter,
        "message_id": letter.message_id,
        "manifest": letter.manifest,
        "correlation_id": letter.correlation_id,
        "reason": headers.get(wire.ERROR_REASON, ""),
        "error_type": headers.get(wire.ERROR_TYPE, ""),
        "error_message": headers.get(wire.ERROR_MESSAGE, ""),
        "handler": headers.get(wire.ERROR_HANDLER, ""),
        "attempt": headers.get(wire.ERROR_ATTEMPT, ""),
        "dead_lettered_at": _when(headers.get(wire.DEAD_LETTERED_AT, "")),
    }


def _show(plan: QueuePlan, letter: Envelope, style: str) -> None:
    try:
        body: str | None = letter.body.decode("utf-8")
    except UnicodeDecodeError:
        body = None
    if style == "json":
        data: dict[str, Any] = {"queue": plan.name, "dead_letter_queue": plan.dead_letter}
        data["headers"] = dict(sorted(letter.to_wire().items()))
        if body is None:
            data["body"], data["body_encoding"] = base64.b64encode(letter.body).decode(), "base64"
        else:
            data["body"], data["body_encoding"] = body, "utf-8"
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return
    print(f"dead letter {letter.message_id} in {plan.dead_letter} (from queue {plan.name})")
    headers = letter.to_wire()
    traceback = headers.pop(wire.ERROR_TRACEBACK, "")
    width = max(map(len, headers), default=0)
    for name, value in sorted(headers.items()):
        note = f"  ({_when(value)})" if name in (wire.TIMESTAMP, wire.DEAD_LETTERED_AT) and _when(value) else ""
        print(f"  {name:<{width}}  {value}{note}")
    if traceback:
        print(f"  {wire.ERROR_TRACEBACK}:")
        print("\n".join("    " + line for line in traceback.rstrip().splitlines()))
    print(f"body ({_count(len(letter.body), 'byte')}, {letter.content_type or 'no content type'}):")
    if body is None:
        print(f"  {letter.body!r}")
    else:
        with contextlib.suppress(ValueError):
            body = json.dumps(json.loads(body), indent=2, ensure_ascii=False)
        print("\n".join("  " + line for line in body.splitlines()))


def _when(epoch: str) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(float(epoch), tz=datetime.timezone.utc)
    except (ValueError, OverflowError, OSError):
        return ""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _first_line(text: str, width: int = 120) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 3] + "..."


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
