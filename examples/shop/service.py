"""One shop service in its own process: ``python -m examples.shop.service payments``.

The broker comes from ``$EVENTBUS_URL``. It runs until SIGTERM or SIGINT,
then prints its counters for the driver's summary.
"""

from __future__ import annotations

import logging
import sys

from eventbus import Bus

from . import journal

SERVICES = ("orders", "payments", "shipping")


def main() -> int:
    logging.basicConfig(level=logging.CRITICAL)  # the demo prints its own story
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    if name not in SERVICES:
        print(f"usage: python -m examples.shop.service {{{','.join(SERVICES)}}}", file=sys.stderr)
        return 2
    bus = Bus(name).include(f"examples.shop.{name}")
    bus.provision()  # its queue exists (and collects messages) before the driver publishes
    print("ready", flush=True)
    bus.run()
    print(journal.report(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
