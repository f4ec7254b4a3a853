"""Counters in Redis and their Prometheus text: series names, the histogram, time windows."""

from __future__ import annotations

import redis

from worker import metrics
from worker.metrics import Counter


def test_series_round_trip_with_awkward_label_values() -> None:
    text = metrics.series(Counter.DELIVERIES, sink='cr"m\\x\ny', outcome="dead")
    assert text == 'exolegs_deliveries_total{outcome="dead",sink="cr\\"m\\\\x\\ny"}'
    assert metrics.parse_series(text) == (
        "exolegs_deliveries_total",
        {"outcome": "dead", "sink": 'cr"m\\x\ny'},
    )
    assert metrics.parse_series("exolegs_jobs_booked") == ("exolegs_jobs_booked", {})


def test_counters_and_histogram_render_as_prometheus_text(redis_client: redis.Redis) -> None:
    pipe = redis_client.pipeline()
    metrics.count(pipe, Counter.DELIVERIES, 2, sink="crm", outcome="delivered")
    metrics.count(pipe, Counter.DELIVERIES, sink="crm", outcome="retry")
    pipe.execute()
    script = redis_client.register_script(
        metrics.LUA + metrics.LUA_E2E + "e2e(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]))"
    )
    for seconds in (0.5, 3, 4, 100000):
        script(keys=metrics.bucket_keys(), args=[seconds])
    gauge = metrics.Gauge("exolegs_jobs_booked", "Jobs in the book.", 3)
    text = metrics.render(metrics.totals(redis_client), [gauge])
    lines = text.splitlines()
    assert 'exolegs_deliveries_total{outcome="delivered",sink="crm"} 2' in lines
    assert 'exolegs_deliveries_total{outcome="retry",sink="crm"} 1' in lines
    assert "# TYPE exolegs_callback_to_last_sink_seconds histogram" in lines
    # cumulative buckets: 0.5 s <= 1; 3 and 4 s <= 5; 100000 s only in +Inf
    assert 'exolegs_callback_to_last_sink_seconds_bucket{le="1"} 1' in lines
    assert 'exolegs_callback_to_last_sink_seconds_bucket{le="2.5"} 1' in lines
    assert 'exolegs_callback_to_last_sink_seconds_bucket{le="5"} 3' in lines
    assert 'exolegs_callback_to_last_sink_seconds_bucket{le="86400"} 3' in lines
    assert 'exolegs_callback_to_last_sink_seconds_bucket{le="+Inf"} 4' in lines
    assert "exolegs_callback_to_last_sink_seconds_count 4" in lines
    assert "exolegs_callback_to_last_sink_seconds_sum 100007.5" in lines
    assert "# TYPE exolegs_jobs_booked gauge" in lines and "exolegs_jobs_booked 3" in lines


def test_windows_sum_the_last_hour_and_day(redis_client: redis.Redis) -> None:
    now = 1_800_000_000.0
    for ago in (30, 600, 7200):  # 30 s, 10 min and 2 h ago
        at = now - ago
        pipe = redis_client.pipeline()
        for key in metrics.bucket_keys(at)[1:]:
            pipe.hincrby(key, metrics.series(Counter.DELIVERIES, sink="a", outcome="dead"), 1)
        pipe.execute()
    window = metrics.window(redis_client, now)
    assert window.sum("1h", Counter.DELIVERIES, sink="a", outcome="dead") == 2
    assert window.sum("24h", Counter.DELIVERIES, sink="a", outcome="dead") == 3
    assert window.sum("1h", Counter.DELIVERIES, sink="b") == 0
    per_minute = window.per_minute(Counter.DELIVERIES, sink="a")
    # now is the first second of a minute: 30 s ago was the minute before, 10 min ago 10 before
    assert len(per_minute) == 60 and per_minute[-2] == per_minute[-11] == 1


def test_p95() -> None:
    assert metrics.p95([]) is None
    assert metrics.p95(float(n) for n in range(1, 101)) == 95.0
    assert metrics.p95([7.0]) == 7.0
