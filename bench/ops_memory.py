"""What the console's per-call data costs in Redis: bytes per call, against the call's own state.

    .venv/bin/python bench/ops_memory.py [--calls 2000] [--sinks 2]

In one process, against one private redis-server: N terminal callbacks go
through the real intake script (with a From and a To, as Exotel sends them),
then each call's legs fetch and its deliveries run through the real pipeline
functions (the Exotel simulator, ``null://`` sinks), exactly the code a
worker runs, without Celery. Then ``MEMORY USAGE`` is summed per key family:

* baseline: the call's own state (its callback hash, record and ledger);
* the console's additions: the call's timeline (``…:timeline:<sid>``) and
  its share of the last-digits index (``exolegs:phone:<4 digits>``).

Prints bytes per call for each and the ratio. The metrics counters are not
per call (one hash per minute and per hour, one field per series) and are
printed on their own.
"""

# Run as a script, sys.path[0] would be bench/, and this file would hide the
# worker package; put the repository root there instead.
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import random

from tests.support.redis_server import start_redis
from worker import metrics, pipeline
from worker.calls.callbacks import event_from_fields
from worker.calls.simulator import SimulatorConfig, start_in_thread
from worker.runtime import Runtime
from worker.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--sinks", type=int, default=2)
    args = parser.parse_args()
    server = start_redis()
    sim, sim_url = start_in_thread(SimulatorConfig(seed=7))
    config = SimulatorConfig()
    try:
        settings = Settings.from_env(
            {
                "REDIS_URL": server.url,
                "CALLBACK_TOKEN": "bench-callback-token-0123456789",
                "SINKS": " ".join(f"null://?name=sink{n}" for n in range(args.sinks)),
                "EXOTEL_BASE_URL": sim_url,
                "EXOTEL_ACCOUNT_SID": config.account_sid,
                "EXOTEL_API_KEY": config.api_key,
                "EXOTEL_API_TOKEN": config.api_token,
                "EXOTEL_RATE_LIMIT": "1000000/second",
                "FETCH_DELAY_SECONDS": "0",
            },
            dotenv=False,
        )
        rt = Runtime(settings)
        rng = random.Random(7)
        sids = [f"{rng.getrandbits(128):032x}" for _ in range(args.calls)]
        for sid in sids:
            customer = f"09{rng.randrange(10**9):09d}"
            rt.intake.accept(
                event_from_fields(
                    {"CallSid": sid, "Status": "completed", "EventType": "terminal",
                     "Direction": "outbound-api", "From": customer, "To": "09123456789"}
                )
            )  # fmt: skip
        for sid in sids:
            pipeline.fetch_call(rt, sid)
            for sink in rt.sinks:
                pipeline.deliver_call(rt, sid, sink)
        families = {"state": 0, "timeline": 0, "phone": 0, "metrics": 0}
        for raw in rt.redis.scan_iter(match="exolegs:*", count=1000):
            key = raw.decode()
            size = int(rt.redis.memory_usage(key, samples=0) or 0)
            if ":timeline:" in key:
                families["timeline"] += size
            elif key.startswith("exolegs:phone:"):
                families["phone"] += size
            elif key.startswith(metrics.PREFIX):
                families["metrics"] += size
            elif any(f":{kind}:" in key for kind in ("call", "record", "ledger")):
                families["state"] += size
        n = args.calls
        state, ops = families["state"] / n, (families["timeline"] + families["phone"]) / n
        entries = sum(int(rt.redis.llen(k)) for k in rt.redis.scan_iter(match="*:timeline:*"))
        print(f"calls: {n}, sinks: {args.sinks}, timeline entries per call: {entries / n:.1f}")
        print(f"baseline, the call's state (callback hash, record, ledger): {state:,.0f} B/call")
        print(f"timeline: {families['timeline'] / n:,.0f} B/call")
        print(f"last-digits index: {families['phone'] / n:,.0f} B/call")
        print(f"console's per-call data / the call's own state: {ops / state:.2f}")
        print(f"metrics counters (fixed, not per call): {families['metrics']:,} B")
        rt.close()
    finally:
        sim.shutdown()
        server.stop()


if __name__ == "__main__":
    main()
