"""Redis bytes per call over a retention window, and the calls a day each plan holds.

    .venv/bin/python bench/memory.py [--calls 2000] [--sinks 2]

In one process, against one private redis-server: N terminal callbacks (the
shape Exotel sends) are booked through the real intake, then every job is run
through the real pipeline (fetch against the Exotel simulator in a thread,
deliveries to ``null://`` sinks) until the job book is empty. That is the
state a call keeps for ``RETENTION_HOURS`` after it is delivered.

Then every key is measured with ``MEMORY USAGE <key> SAMPLES 0``, as stored
and, as the baseline in the same run, with its record and callbacks rewritten
as plain JSON into a scratch key (how they were kept before
worker/calls/stored.py):

* a key whose name holds one of the calls' sids is that call's own (its
  callbacks, record, ledger, timeline, ...), grouped by family;
* every other key (the job book, the phone index, metrics, rate limits) is
  shared, and its bytes are divided among the N calls: the book's share.

``used_memory`` from ``INFO memory`` before booking and after is printed as a
cross-check only: it also counts the script cache and client buffers, which do
not grow with the number of calls.
Finally: how many calls a day fit each Heroku Key-Value Store plan at the
default retention, keeping a quarter of the plan free for the broker queue,
bursts and fragmentation.
"""

# Run as a script, sys.path[0] would be bench/, and this file would hide the
# worker package; put the repository root there instead.
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json
import re
from collections import defaultdict

import redis

from bench.common import PrivateRedis, machine, table, workdir
from worker.calls import stored
from worker.calls.callbacks import CallbackEvent, event_from_fields
from worker.calls.simulator import SimulatorConfig, start_in_thread
from worker.runtime import Runtime
from worker.settings import Settings
from worker.tasks import run_batch

PLANS = {"mini": 25 * 2**20, "premium-0": 50 * 2**20, "premium-5": 2**30}
HEADROOM = 0.75  # share of a plan the calls may fill


def terminal_event(call_sid: str, n: int) -> CallbackEvent:
    """A terminal StatusCallback as Exotel sends it (bench/worker.py's shape, varied numbers)."""
    return event_from_fields(
        {
            "CallSid": call_sid,
            "EventType": "terminal",
            "Status": "completed",
            "Direction": "outbound-api",
            "From": f"0987654{n % 10000:04d}",
            "To": f"0912345{(n * 7) % 10000:04d}",
            "StartTime": "2024-01-15 14:25:12",
            "EndTime": "2024-01-15 14:30:45",
            "ConversationDuration": "320",
            "CustomField": "order_12345",
            "RecordingUrl": f"https://s3-ap-southeast-1.amazonaws.com/recordings/{call_sid}.mp3",
        }
    )


def family(key: str, sid: str) -> str:
    """``exolegs:record:<sid>`` -> ``exolegs:record:<sid>``-shaped family name."""
    return key.replace(sid, "<sid>")


SCRATCH = "bench:plain"


def as_plain_json(client: redis.Redis, key: str) -> int | None:
    """The bytes ``key`` would take with its record or callbacks as plain JSON (the baseline).

    The same value, written the way exolegs kept it before worker/calls/stored.py,
    into a scratch key that is measured and dropped.
    """
    kind = client.type(key)
    if kind == b"string":
        value = client.get(key)
        if not value or value[:1] == b"{":
            return None
        client.set(SCRATCH, json.dumps(stored.loads(value), separators=(",", ":")))
    elif kind == b"hash":
        fields = client.hgetall(key)
        packed = {f: v for f, v in fields.items() if v[:1] == b"\x01"}
        if not packed:
            return None
        unpacked = {f: json.dumps(stored.loads(v), separators=(",", ":")) for f, v in packed.items()}  # noqa: E501
        client.delete(SCRATCH)
        client.hset(SCRATCH, mapping={**fields, **unpacked})
    else:
        return None
    size = int(client.memory_usage(SCRATCH, samples=0) or 0)
    client.delete(SCRATCH)
    return size


def measure(args: argparse.Namespace) -> int:
    with workdir("exolegs-memory-") as work:
        store = PrivateRedis(work)
        server, sim_url = start_in_thread(SimulatorConfig())
        try:
            sim = SimulatorConfig()
            sinks = " ".join(f"null://?name=s{n}" for n in range(1, args.sinks + 1))
            settings = Settings.from_env(
                {
                    "REDIS_URL": store.url,
                    "EXOTEL_BASE_URL": sim_url,
                    "EXOTEL_ACCOUNT_SID": sim.account_sid,
                    "EXOTEL_API_KEY": sim.api_key,
                    "EXOTEL_API_TOKEN": sim.api_token,
                    "EXOTEL_RATE_LIMIT": "1000000/second",
                    "FETCH_DELAY_SECONDS": "0",
                    "RECONCILE": "off",
                    "SINKS": sinks,
                    "SPOOL_DIR": str(work / "spool"),
                },
                dotenv=False,
            )
            rt = Runtime(settings)
            client = rt.redis
            rt.book.size()  # connect, load nothing yet
            before = int(client.info("memory")["used_memory"])
            client.config_resetstat()
            sids = [f"c{n:06d}{'a' * 26}" for n in range(args.calls)]  # 32 chars, like Exotel's
            for n, sid in enumerate(sids):
                rt.intake.accept(terminal_event(sid, n))
            while rt.book.size():
                for batch in rt.book.claim():
                    run_batch(rt, batch)
            after = int(client.info("memory")["used_memory"])
            stats = client.info("commandstats")
            per_family: dict[str, int] = defaultdict(int)
            shared: dict[str, int] = defaultdict(int)
            sid_of = re.compile(r"c\d{6}a{26}")
            plain: dict[str, int] = defaultdict(int)
            for raw in list(client.scan_iter(count=1000)):
                key = raw.decode()
                size = int(client.memory_usage(key, samples=0) or 0)
                found = sid_of.search(key)
                if found:
                    name = family(key, found.group(0))
                    per_family[name] += size
                    plain[name] += as_plain_json(client, key) or size
                else:
                    shared[re.sub(r":\d+$", ":<n>", key)] += size
            rt.close()
        finally:
            server.shutdown()
            store.stop()
    n = args.calls
    own = sum(per_family.values()) / n
    share = sum(shared.values()) / n
    per_call = own + share
    before_total = sum(plain.values()) / n + share
    rows = [
        [name, f"{plain[name] / n:.0f}", f"{size / n:.0f}"]
        for name, size in sorted(per_family.items())
    ]
    rows.append(["(shared keys, divided among the calls)", f"{share:.0f}", f"{share:.0f}"])
    rows.append(["total per call (MEMORY USAGE)", f"{before_total:.0f}", f"{per_call:.0f}"])
    rows.append(["used_memory delta per call (INFO)", "", f"{(after - before) / n:.0f}"])
    print(f"{n} calls, {args.sinks} sinks; {machine(args.redis_version)}")
    print(table(["key family", "plain JSON (bytes/call)", "as stored (bytes/call)"], rows))
    print(f"as stored / plain JSON: {per_call / before_total:.2f}")
    print()
    print("shared keys: " + ", ".join(f"{k} {v / n:.0f}" for k, v in sorted(shared.items())))
    print()
    # Round trips are what a call costs the worker: Redis commands per call,
    # a script counted once (its inner calls are listed too, as Redis counts them).
    counted = sorted(
        ((name.removeprefix("cmdstat_"), int(v["calls"])) for name, v in stats.items()),
        key=lambda item: -item[1],
    )
    print("commands per call: " + ", ".join(f"{c} {k / n:.1f}" for c, k in counted if k >= n / 10))
    print()
    hours = settings.retention_hours
    bytes_per_call = per_call
    plan_rows = []
    for name, size in PLANS.items():
        held = size * HEADROOM / bytes_per_call
        per_day = held * 24 / hours
        plan_rows.append([name, f"{size / 2**20:.0f} MB", f"{held:,.0f}", f"{per_day:,.0f}"])
    print(
        f"RETENTION_HOURS={hours:g}, {HEADROOM:.0%} of the plan for calls, "
        f"{bytes_per_call:.0f} bytes per call (MEMORY USAGE, as stored)"
    )
    print(table(["plan", "memory", "calls held", "calls/day"], plan_rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--calls", type=int, default=2000, help="calls to book and deliver")
    p.add_argument("--sinks", type=int, default=2, help="null:// sinks each call is delivered to")
    args = p.parse_args(argv)
    import subprocess

    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=True)
    args.redis_version = out.stdout.split("v=")[1].split()[0] if "v=" in out.stdout else "?"
    return measure(args)


if __name__ == "__main__":
    raise SystemExit(main())
