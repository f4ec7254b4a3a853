"""How long /readyz takes with a big keyspace: 100k unrelated keys and an open circuit.

    .venv/bin/python bench/readyz.py [--keys 100000] [--calls 200]

Starts a private redis-server, fills it with ``--keys`` unrelated keys (and
2,000 circuit-like helper keys that a scan would have to skip), opens one
circuit, builds the edge in-process and calls ``GET /readyz`` ``--calls``
times through Flask's test client, after one call that warms the connection.
Prints the median and p99 and the Redis commands one call costs
(``INFO commandstats``). The goal: under 50 ms with 100k keys. The baseline
in the same run is ``/healthz``, which touches nothing.
"""

# Run as a script, sys.path[0] would be bench/; put the repository root there instead.
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import secrets
import shlex
import statistics
import time

from bench.common import PrivateRedis, percentile, workdir
from web.app import create_app
from worker.jobs.circuit import Circuit
from worker.settings import Settings

GOAL_MS = 50.0


def commands(client: object) -> int:
    stats = client.info("commandstats")  # type: ignore[attr-defined]
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


def timed(call: object, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        out.append((time.perf_counter() - started) * 1000.0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--calls", type=int, default=200)
    args = p.parse_args(argv)
    print(f"$ {shlex.join([Path(sys.executable).name, *sys.argv])}")
    with workdir("exolegs-bench-readyz-", False) as work:
        redis = PrivateRedis(work)
        try:
            client = redis.client()
            pipe = client.pipeline(transaction=False)
            for start in range(0, args.keys, 5_000):
                pipe.mset({f"unrelated:{n}": "x" for n in range(start, start + 5_000)})
            pipe.mset({f"exolegs:circuit:sink:x{n}:probe": "1" for n in range(2_000)})
            pipe.execute()
            Circuit(client, "sink:crm").open("answered 401")
            env = {
                "REDIS_URL": redis.url,
                "CALLBACK_TOKEN": secrets.token_urlsafe(24),
                "SPOOL_DIR": str(work / "spool"),
            }
            app = create_app(Settings.from_env(env, dotenv=False))
            web = app.test_client()
            web.get("/readyz")
            before = commands(client)
            web.get("/readyz")
            per_call = commands(client) - before
            ready = timed(lambda: web.get("/readyz"), args.calls)
            health = timed(lambda: web.get("/healthz"), args.calls)
            app.extensions["exolegs"].drainer.stop()
            print(f"{client.dbsize()} keys in Redis; one /readyz call costs {per_call} commands")
            print(
                f"/readyz: median {statistics.median(ready):.2f} ms, "
                f"p99 {percentile(sorted(ready), 99):.2f} ms over {args.calls} calls; "
                f"/healthz: median {statistics.median(health):.2f} ms"
            )
            worst = percentile(sorted(ready), 99)
            met = "MET" if worst < GOAL_MS else "MISSED"
            print(f"goal p99 < {GOAL_MS:g} ms: {met}")
            return 0 if worst < GOAL_MS else 1
        finally:
            redis.stop()


if __name__ == "__main__":
    sys.exit(main())
