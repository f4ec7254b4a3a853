"""/metrics is exact across processes: 2 web processes (2 gunicorn workers each), 2 workers.

The counters live in Redis, so whichever process a scrape lands on gives the
same totals, and they equal what was sent.
"""

from __future__ import annotations

import re
from pathlib import Path

import requests

from tests.conftest import CALLBACK_TOKEN
from tests.support.processes import read_jsonl, start_web, start_worker, wait_for
from tests.support.redis_server import free_port

TOKEN = "metrics-token-0123456789abcdef"
CALLS = 40


def scrape(port: int) -> dict[str, float]:
    text = requests.get(
        f"http://127.0.0.1:{port}/metrics",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    ).text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_totals_equal_what_was_sent_whichever_process_answers(
    pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**pipeline_env, "METRICS_TOKEN": TOKEN, "WEB_CONCURRENCY": "2"}
    sink = Path(env["SINKS"].removeprefix("jsonl://"))
    ports = [free_port(), free_port()]
    webs = [start_web(env, tmp_path / f"web{n}.log", port) for n, port in enumerate(ports)]
    workers = [start_worker(env, tmp_path / f"worker{n}.log") for n in range(2)]
    try:
        session = requests.Session()
        for n in range(CALLS):
            port = ports[n % 2]
            url = f"http://127.0.0.1:{port}/exotel/callback/{CALLBACK_TOKEN}"
            data = {"CallSid": f"CAmetric{n:03d}", "Status": "completed"}
            assert session.post(url, data=data, timeout=5).status_code == 200
            if n % 8 == 0:  # Exotel retrying: a duplicate, on the other process
                other = f"http://127.0.0.1:{ports[(n + 1) % 2]}/exotel/callback/{CALLBACK_TOKEN}"
                assert session.post(other, data=data, timeout=5).json()["duplicate"] is True
        for port in ports:
            wrong = f"http://127.0.0.1:{port}/exotel/callback/wrong-token-0123456789"
            assert session.post(wrong, data={"CallSid": "x"}, timeout=5).status_code == 403
        wait_for(lambda: len(read_jsonl(sink)) == CALLS, timeout=90)

        def settled() -> dict[str, float] | None:
            first, second = scrape(ports[0]), scrape(ports[1])
            counters = {k: v for k, v in first.items() if "_total" in k or "_seconds_" in k}
            same = counters == {k: v for k, v in second.items() if k in counters}
            rejected = first.get('exolegs_callbacks_total{outcome="rejected"}', 0)
            return first if same and rejected == 2 else None

        totals = wait_for(settled, timeout=15, interval=0.5)
        assert totals['exolegs_callbacks_total{account="default",outcome="accepted"}'] == CALLS
        assert totals['exolegs_callbacks_total{account="default",outcome="duplicate"}'] == CALLS / 8
        assert totals['exolegs_callbacks_total{outcome="rejected"}'] == 2
        account = re.escape("default")
        fetched = [
            v for k, v in totals.items()
            if re.fullmatch(rf'exolegs_legs_fetches_total\{{account="{account}",code="200"\}}', k)
        ]
        assert fetched == [CALLS]
        delivered = 'exolegs_deliveries_total{account="default",outcome="delivered",sink="jsonl"}'
        assert totals[delivered] == CALLS
        assert totals["exolegs_callback_to_last_sink_seconds_count"] == CALLS
        assert totals['exolegs_callback_to_last_sink_seconds_bucket{le="+Inf"}'] == CALLS
        assert totals["exolegs_jobs_booked"] == 0
        assert totals['exolegs_dead_letters{sink="jsonl"}'] == 0
    finally:
        for worker in workers:
            worker.stop()
        for web in webs:
            web.stop()
