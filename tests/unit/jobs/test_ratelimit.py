from __future__ import annotations

import itertools
import time

import redis

from worker.jobs.ratelimit import HEADROOM, RateLimiter, burst_for
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
    slots = [time.time() + limiter.take("exotel:acme", rate, f"job:{n}") for n in range(40)]
    assert all(s - start < 0.5 for s in slots[:10])  # the burst goes at once
    later = slots[10:]
    gaps = [b - a for a, b in itertools.pairwise(later)]
    assert all(abs(g - spacing) < 0.02 for g in gaps)
    # never more than rate + burst in any period: the 40th slot is 30 spacings after the burst
    assert abs(later[-1] - slots[9] - spacing * 30) < 0.1


def test_names_are_independent(redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis_client)
    rate = Rate(1, 60)  # burst 2
    assert limiter.take("exotel:a", rate, "j1") == limiter.take("exotel:a", rate, "j2") == 0
    assert limiter.take("exotel:b", rate, "j3") == 0
    assert limiter.take("exotel:a", rate, "j4") > 50


def test_block_empties_the_bucket_for_everyone(redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis_client)
    rate = Rate(100, 1)
    limiter.block("exotel:acme", 2.0)
    assert 1.8 < limiter.acquire("exotel:acme", rate) <= 2.0
    assert limiter.take("exotel:acme", rate, "j1") >= 1.8
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


def test_a_deferred_job_keeps_its_slot(redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis_client)
    rate = Rate(10, 1)  # burst 2, slots ~0.1 s apart
    assert limiter.take("x", rate, "a") == limiter.take("x", rate, "b") == 0
    wait = limiter.take("x", rate, "c")
    assert wait > 0  # told its slot
    assert limiter.take("x", rate, "d") > wait  # the next one is behind it
    assert 0 < limiter.take("x", rate, "c") <= wait  # asking again keeps the same slot
    time.sleep(wait + 0.01)
    assert limiter.take("x", rate, "c") == 0  # its turn
    assert not redis_client.hexists("c", "slot:x")


def test_after_a_429_waiting_jobs_line_up_again_instead_of_crowding_the_gate(
    redis_client: redis.Redis,
) -> None:
    limiter = RateLimiter(redis_client)
    rate = Rate(10, 1)  # burst 2, slots ~0.1 s apart
    waits = [limiter.take("y", rate, f"job{n}") for n in range(12)]
    assert waits[-1] > 0.5  # a backlog, each job holding its slot
    limiter.block("y", 1.0)  # Exotel said 429, Retry-After 1
    after = sorted(limiter.take("y", rate, f"job{n}") for n in range(12))
    # Everyone now waits past the block, and no more than the burst at its end:
    # the rest are spaced out at the rate, not all told "come back in a second".
    assert all(w >= 0.95 for w in after)
    assert sum(1 for w in after if w < 1.05) <= burst_for(rate)
    assert after[-1] - after[0] > 0.8
