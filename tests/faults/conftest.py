"""The fault suite: `just faults` (also run by .ci/run). Prints a summary table at the end."""

from __future__ import annotations

import pytest

from tests.faults.harness import Figures

RESULTS: list[Figures] = []


@pytest.fixture
def record() -> object:
    """Keep a case's figures for the summary table, and print them now."""

    def keep(figures: Figures) -> Figures:
        RESULTS.append(figures)
        print(f"\n{Figures.HEADER}\n{figures.row()}")
        return figures

    return keep


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults/" in str(item.fspath):
            item.add_marker(pytest.mark.faults)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    terminalreporter.section("fault suite figures")
    terminalreporter.write_line(
        "dups: messages the bus marked handled twice (must be 0); reruns: handler bodies run again after a kill "
        "hit between the handler's end and its done mark (at-least-once, informational)"
    )
    terminalreporter.write_line(Figures.HEADER)
    for figures in RESULTS:
        terminalreporter.write_line(figures.row())
