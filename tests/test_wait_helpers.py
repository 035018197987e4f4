from __future__ import annotations

import asyncio
import threading
import time

import pytest

from eventbus import wait_until, wait_until_async


def test_wait_until_returns_the_first_truthy_value() -> None:
    box: list[int] = []
    threading.Timer(0.05, lambda: box.append(7)).start()
    assert wait_until(lambda: box, timeout=5) == [7]


def test_wait_until_says_what_it_waited_for() -> None:
    def ledger_balanced() -> bool:
        assert 1 + 1 == 3, "off by one cent"
        return True

    started = time.monotonic()
    with pytest.raises(
        TimeoutError, match=r"waited 0.2s for the ledger \(.*ledger_balanced\); last assertion: off by one"
    ):
        wait_until(ledger_balanced, timeout=0.2, message="the ledger")
    assert time.monotonic() - started < 2


def test_wait_until_async_yields_to_the_loop() -> None:
    async def scenario() -> object:
        box: list[str] = []

        async def later() -> None:
            await asyncio.sleep(0.05)
            box.append("done")

        task = asyncio.create_task(later())  # runs only if the helper yields to the loop
        result = await wait_until_async(lambda: box, timeout=5)
        await task
        return result

    assert asyncio.run(scenario()) == ["done"]


def test_wait_until_async_times_out_with_the_last_value() -> None:
    with pytest.raises(TimeoutError, match="last value 0"):
        asyncio.run(wait_until_async(lambda: 0, timeout=0.1))
