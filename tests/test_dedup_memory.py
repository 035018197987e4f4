from __future__ import annotations

import time

from eventbus import Claim, MemoryDedupCache


def test_claim_done_release_cycle() -> None:
    cache = MemoryDedupCache(lease=60, ttl=60)
    assert cache.claim("k") is Claim.CLAIMED
    assert cache.claim("k") is Claim.BUSY
    cache.release("k")
    assert cache.claim("k") is Claim.CLAIMED
    cache.done("k")
    assert cache.claim("k") is Claim.DONE
    cache.release("k")  # a late release never erases a success
    assert cache.claim("k") is Claim.DONE


def test_lease_and_ttl_expire() -> None:
    cache = MemoryDedupCache(lease=0.05, ttl=0.05)
    assert cache.claim("crashed") is Claim.CLAIMED
    time.sleep(0.06)
    assert cache.claim("crashed") is Claim.CLAIMED  # the dead worker's lease expired
    cache.done("crashed")
    time.sleep(0.06)
    assert cache.claim("crashed") is Claim.CLAIMED  # remembered for the TTL only
