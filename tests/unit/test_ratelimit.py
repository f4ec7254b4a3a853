from __future__ import annotations

import itertools
import time

import redis

from worker.ratelimit import HEADROOM, RateLimiter, burst_for
from worker.settings import Rate


def test_burst_is_small() -> None:
    assert burst_for(Rate(200, 60)) == 10
    assert burst_for(Rate(10, 1)) == 2
    assert burst_for(Rate(1, 60)) == 2


def test_reservations_are_spaced_at_the_rate_after_the_burst(redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis_client)
    rate = Rate(200, 60)  # 0.3 s apart (a little more, for headroom), burst 10
    spacing = 0.3 / HEADROOM
    start = time.time()
    slots = [time.time() + limiter.reserve("exotel:acme", rate) for _ in range(40)]
    assert all(s - start < 0.5 for s in slots[:10])  # the burst goes at once
    later = slots[10:]
    gaps = [b - a for a, b in itertools.pairwise(later)]
    assert all(abs(g - spacing) < 0.02 for g in gaps)
    # never more than rate + burst in any period: the 40th slot is 30 spacings after the burst
    assert abs(later[-1] - slots[9] - spacing * 30) < 0.1


def test_names_are_independent(redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis_client)
    rate = Rate(1, 60)  # burst 2
    assert limiter.reserve("exotel:a", rate) == limiter.reserve("exotel:a", rate) == 0
    assert limiter.reserve("exotel:b", rate) == 0
    assert limiter.reserve("exotel:a", rate) > 50


def test_block_empties_the_bucket_for_everyone(redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis_client)
    rate = Rate(100, 1)
    limiter.block("exotel:acme", 2.0)
    assert 1.8 < limiter.acquire("exotel:acme", rate) <= 2.0
    assert limiter.reserve("exotel:acme", rate) >= 1.8
    assert limiter.acquire("exotel:other", rate) == 0


def test_the_gate_is_strict(redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis_client)
    rate = Rate(10, 1)  # burst 2
    assert limiter.acquire("exotel:g", rate) == 0
    assert limiter.acquire("exotel:g", rate) == 0
    wait = limiter.acquire("exotel:g", rate)
    assert 0.05 < wait <= 0.1  # refused, told how long
    limiter.block("exotel:g", 1.0)
    assert limiter.acquire("exotel:g", rate) > 0.9
