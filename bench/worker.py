"""Worker benchmark: end-to-end calls/s vs Celery's own no-op task throughput, same pool.

    .venv/bin/python bench/worker.py [--calls 2000] [--concurrency 2] [--pool prefork]

In one run, against one private redis-server (the broker and the state):

* ours: a real ``exolegs worker`` process (``python -m worker.cli worker``)
  against the Exotel simulator with no latency, EXOTEL_RATE_LIMIT
  1000000/second (the limiter is still consulted on every fetch, it just never
  makes anyone wait), FETCH_DELAY_SECONDS=0 and one ``null://`` sink. N
  terminal callbacks are booked through the real intake (the Lua script the
  web edge runs); done is when the job book is empty, and then every call
  must have its ledger entry. One call is 1 fetch task + 1 delivery task per
  sink, each handed to Celery by the job pump;
* baseline: a real ``celery worker`` for ``bench.noop_app`` with the same
  pool, concurrency and reliability settings; N no-op tasks are published
  from here, done is when the INCR counter reaches N.

Each worker is warmed up (2 x concurrency calls or tasks) before the clock
starts at the first booking/publish. Runs alternate baseline, ours (``--rounds``
pairs), each with a fresh worker process and a flushed Redis.
Goal: calls/s >= 0.5 x no-op tasks/s.
"""

# Run as a script, sys.path[0] would be bench/, and this file would hide the
# worker package; put the repository root there instead.
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
from collections.abc import Callable
from dataclasses import dataclass

import redis
import requests

from bench.common import (
    Child,
    PrivateRedis,
    free_port,
    group_cpu,
    interrupts_as_keyboard,
    leader_cpu,
    machine,
    self_cpu,
    table,
    wait_until,
    workdir,
)
from worker import jobs, keys
from worker.calls.callbacks import CallbackEvent, event_from_fields
from worker.calls.intake import Intake
from worker.calls.simulator import SimulatorConfig
from worker.jobs import JobBook, ledger
from worker.jobs.deadletters import DEAD

RATIO_GOAL = 0.5
POLL = 0.01  # seconds between completion checks (ZCARD / GET: negligible load)


@dataclass(frozen=True)
class Cpu:
    """CPU seconds so far: the worker (main process, pool), Redis, this process, the simulator."""

    main: float  # Celery's consumer: broker I/O, and for ours the job pump's publishing
    pool: float  # the task bodies
    redis: float
    bench: float  # booking or publishing, and polling
    simulator: float  # the Exotel simulator's processes (Exotel's side, on this machine here)

    @classmethod
    def sample(cls, worker: Child, store: PrivateRedis, sim: Child) -> Cpu:
        main, pool = leader_cpu(worker.proc.pid)
        return cls(main, pool, store.cpu(), self_cpu(), group_cpu(sim.proc.pid))

    @property
    def worker_and_redis(self) -> float:
        return self.main + self.pool + self.redis

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(
            self.main - other.main,
            self.pool - other.pool,
            self.redis - other.redis,
            self.bench - other.bench,
            self.simulator - other.simulator,
        )


@dataclass
class Run:
    n: int
    kind: str  # "baseline" | "exolegs"
    items: int  # tasks (baseline) or calls (ours)
    tasks: int  # Celery tasks executed for them
    seconds: float
    cpu: Cpu

    @property
    def per_second(self) -> float:
        return self.items / self.seconds

    @property
    def tasks_per_second(self) -> float:
        return self.tasks / self.seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--calls", type=int, default=2000, help="calls (and no-op tasks) per run")
    p.add_argument("--concurrency", type=int, default=2, help="Celery pool size, both workers")
    p.add_argument(
        "--pool",
        choices=["prefork", "threads", "solo"],
        default="prefork",
        help="Celery pool, both workers",
    )
    p.add_argument("--rounds", type=int, default=2, help="baseline/ours pairs")
    p.add_argument(
        "--sink",
        choices=["null", "jsonl"],
        default="null",
        help="ours delivers to null:// or a JSONL file in the temp dir",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING"],
        help="both workers (INFO is the production default; logs go to the temp dir)",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="give up on a run after this")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs) afterwards")
    return p.parse_args(argv)


# ------------------------------------------------------------------ config
def check_same_celery_settings(redis_url: str) -> list[str]:
    """Settings where the no-op app differs from what exolegs configures (should be none)."""
    from bench import noop_app
    from worker.celery_app import configure
    from worker.settings import Settings

    ours = configure(Settings.from_env({"REDIS_URL": redis_url}, dotenv=False)).conf
    return [
        f"{name}: exolegs {ours.get(name)!r}, no-op {value!r}"
        for name, value in noop_app.SETTINGS.items()
        if ours.get(name) != value
    ]


def exolegs_env(
    args: argparse.Namespace, redis_url: str, sim_url: str, work: Path
) -> dict[str, str]:
    sim = SimulatorConfig()
    sink = "null://" if args.sink == "null" else f"jsonl://{work / 'calls.jsonl'}"
    return {
        "REDIS_URL": redis_url,
        "EXOTEL_BASE_URL": sim_url,
        "EXOTEL_ACCOUNT_SID": sim.account_sid,
        "EXOTEL_API_KEY": sim.api_key,
        "EXOTEL_API_TOKEN": sim.api_token,
        "EXOTEL_RATE_LIMIT": "1000000/second",
        "FETCH_DELAY_SECONDS": "0",
        "RECONCILE": "off",  # the sweeper's list requests are not the pipeline
        "SINKS": sink,
        "LOG_LEVEL": args.log_level,
        "SPOOL_DIR": str(work / "spool"),
    }


def pool_args(args: argparse.Namespace) -> list[str]:
    return ["--concurrency", str(args.concurrency), "--pool", args.pool]


def timed(
    worker: Child,
    store: PrivateRedis,
    sim: Child,
    submit: Callable[[], object],
    done: Callable[[], bool],
    what: str,
    timeout: float,
) -> tuple[float, Cpu]:
    """Seconds from the first submission until ``done()``, and the CPU spent meanwhile."""
    before = Cpu.sample(worker, store, sim)
    started = time.monotonic()
    submit()
    wait_until(done, what, timeout=timeout, interval=POLL, child=worker)
    seconds = time.monotonic() - started
    return seconds, Cpu.sample(worker, store, sim) - before


# ------------------------------------------------------------------ ours
def terminal_event(call_sid: str) -> CallbackEvent:
    return event_from_fields(
        {
            "CallSid": call_sid,
            "EventType": "terminal",
            "Status": "completed",
            "Direction": "outbound-api",
            "From": "09876543210",
            "To": "09123456789",
            "StartTime": "2024-01-15 14:25:12",
            "EndTime": "2024-01-15 14:30:45",
            "ConversationDuration": "320",
            "CustomField": "order_12345",
            "RecordingUrl": "https://s3-ap-southeast-1.amazonaws.com/recordings/abc123.mp3",
        }
    )


class SimulatorProcess:
    """``exolegs simulate`` in its own process (gunicorn, keep-alive, as Exotel is)."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.child = Child(
            "exolegs simulate",
            [sys.executable, "-m", "worker.cli", "simulate", "--port", str(self.port)],
            {},
            work / "simulator.log",
        )
        wait_until(self._up, "the simulator to listen", child=self.child)

    def _up(self) -> bool:
        try:
            return requests.get(f"{self.url}/_sim/requests", timeout=1).ok
        except requests.RequestException:
            return False

    def reset(self) -> None:
        requests.post(f"{self.url}/_sim/reset", timeout=5).raise_for_status()

    def total(self) -> int:
        return int(requests.get(f"{self.url}/_sim/requests", timeout=5).json()["total"])

    def shutdown(self) -> None:
        self.child.stop()


def run_ours(
    n: int,
    args: argparse.Namespace,
    env: dict[str, str],
    store: PrivateRedis,
    sim: SimulatorProcess,
    work: Path,
) -> Run:
    client = store.client()
    client.flushall()  # our private server, no worker running
    sim.reset()
    intake = Intake(client, retention_seconds=3600, fetch_delay=0.0)
    sink = "null" if args.sink == "null" else "jsonl"
    tag = secrets.token_hex(3)
    child = Child(
        "exolegs worker",
        [sys.executable, "-m", "worker.cli", "worker", *pool_args(args)],
        env,
        work / f"run{n}-exolegs-worker.log",
    )
    try:
        warm = [f"warm{tag}{i:04d}" for i in range(2 * args.concurrency)]
        for sid in warm:
            intake.accept(terminal_event(sid))
        wait_until(
            lambda: all(ledger.delivered(client, sid, sink) for sid in warm),
            "the exolegs worker to deliver its warm-up calls",
            timeout=60,
            child=child,
        )
        sids = [f"b{tag}{i:08d}" for i in range(args.calls)]
        events = [terminal_event(sid) for sid in sids]
        seconds, cpu = timed(
            child,
            store,
            sim.child,
            lambda: [intake.accept(e) for e in events],
            lambda: client.zcard(jobs.JOBS) == 0,
            "the job book to empty",
            args.timeout,
        )
    finally:
        child.stop()
    pipe = client.pipeline(transaction=False)
    for sid in sids:
        pipe.hget(keys.ledger(sid), sink)
    missing = sum(1 for state in pipe.execute() if state is None or state.startswith(b"pending"))
    dead = client.zcard(DEAD)
    fetched = sim.total() - len(warm)
    if missing or dead or fetched != args.calls:
        raise RuntimeError(
            f"ours did not finish the work: {missing} calls without a ledger entry, "
            f"{dead} dead letters, {fetched} legs fetches for {args.calls} calls "
            f"(see {child.log_path})"
        )
    sinks = 1
    return Run(n, "exolegs", args.calls, args.calls * (1 + sinks), seconds, cpu)


# ------------------------------------------------------------------ baseline
def run_baseline(
    n: int, args: argparse.Namespace, store: PrivateRedis, sim: SimulatorProcess, work: Path
) -> Run:
    from bench import noop_app

    client = store.client()
    client.flushall()
    noop_app.app.conf.broker_url = store.url
    child = Child(
        "no-op celery worker",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.noop_app",
            "worker",
            "-Q",
            noop_app.QUEUE,
            "--loglevel",
            args.log_level,
            "--without-gossip",
            "--without-mingle",
            *pool_args(args),
        ],
        {"BENCH_BROKER_URL": store.url},
        work / f"run{n}-noop-worker.log",
    )
    try:
        warm = 2 * args.concurrency
        for _ in range(warm):
            noop_app.noop.apply_async()
        wait_until(
            lambda: int(client.get(noop_app.DONE_KEY) or 0) >= warm,
            "the no-op worker to run its warm-up tasks",
            timeout=60,
            child=child,
        )
        client.set(noop_app.DONE_KEY, 0)
        seconds, cpu = timed(
            child,
            store,
            sim.child,
            lambda: [noop_app.noop.apply_async() for _ in range(args.calls)],
            lambda: int(client.get(noop_app.DONE_KEY) or 0) >= args.calls,
            "the no-op tasks to finish",
            args.timeout,
        )
    finally:
        child.stop()
    done = int(client.get(noop_app.DONE_KEY) or 0)
    if done != args.calls:
        raise RuntimeError(f"the no-op worker ran {done} tasks for {args.calls} published")
    return Run(n, "baseline", args.calls, args.calls, seconds, cpu)


# ------------------------------------------------------------------ report
def describe(run: Run) -> str:
    unit = "no-op tasks" if run.kind == "baseline" else "calls"
    text = f"{run.kind:8} {run.items} {unit} in {run.seconds:.2f} s: {run.per_second:.0f} {unit}/s"
    if run.kind == "exolegs":
        text += f" ({run.tasks_per_second:.0f} tasks/s)"
    return text


def report(runs: list[Run]) -> None:
    print()

    def ms(seconds: float, run: Run) -> str:
        return f"{seconds / run.items * 1e3:.2f}"

    rows = [
        [
            r.n,
            r.kind,
            r.items,
            f"{r.seconds:.2f}",
            f"{r.per_second:.0f}",
            f"{r.tasks_per_second:.0f}",
            ms(r.cpu.main, r),
            ms(r.cpu.pool, r),
            ms(r.cpu.redis, r),
            ms(r.cpu.bench, r),
            ms(r.cpu.simulator, r),
        ]
        for r in runs
    ]
    print(
        table(
            [
                "run",
                "worker",
                "calls or tasks",
                "seconds",
                "per second",
                "jobs/s",
                "main process CPU ms/item",
                "pool CPU ms/item",
                "redis CPU ms/item",
                "bench CPU ms/item",
                "simulator CPU ms/item",
            ],
            rows,
        )
    )
    ours = [r.per_second for r in runs if r.kind == "exolegs"]
    base = [r.per_second for r in runs if r.kind == "baseline"]
    ratio = statistics.mean(ours) / statistics.mean(base)
    task_ratio = statistics.mean(r.tasks_per_second for r in runs if r.kind == "exolegs") / (
        statistics.mean(base)
    )
    pairs = ", ".join(f"{o / b:.2f}" for o, b in zip(ours, base, strict=True))
    print()
    print(
        "one call = 1 fetch job + 1 delivery job per sink (1 sink here) = 2 jobs; under a "
        f"backlog the pump sends jobs of one kind to Celery in batches of up to {JobBook.batch}"
    )
    print(
        f"calls/s ours / no-op tasks/s: {ratio:.2f} (mean {statistics.mean(ours):.0f} calls/s vs "
        f"{statistics.mean(base):.0f} no-op tasks/s; per pair {pairs})  goal >= {RATIO_GOAL}: "
        f"{'MET' if ratio >= RATIO_GOAL else 'MISSED'}"
    )
    print(f"jobs/s ours / no-op tasks/s: {task_ratio:.2f} (for reference)")
    cost = {
        kind: statistics.mean(r.cpu.worker_and_redis / r.items for r in runs if r.kind == kind)
        for kind in ("baseline", "exolegs")
    }
    print(
        f"CPU cost ratio, worker+Redis CPU per no-op task / per call: "
        f"{cost['baseline'] / cost['exolegs']:.2f} ({cost['baseline'] * 1e3:.2f} vs "
        f"{cost['exolegs'] * 1e3:.2f} ms; the calls/s ratio on a CPU-bound box with the "
        "simulator and the publisher elsewhere; steadier than calls/s on a shared machine)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"$ {shlex.join([Path(sys.executable).name, *sys.argv])}")
    with interrupts_as_keyboard(), workdir("exolegs-bench-worker-", args.keep) as work:
        store = PrivateRedis(work)
        sim: SimulatorProcess | None = None
        try:
            print(machine(store.version()))
            drift = check_same_celery_settings(store.url)
            if drift:
                print("WARNING: the no-op app's Celery settings differ from exolegs':")
                print("\n".join(f"  {d}" for d in drift))
            sim = SimulatorProcess(work)
            env = exolegs_env(args, store.url, sim.url, work)
            print(
                f"pool {args.pool} x {args.concurrency}; {args.calls} calls or no-op tasks per "
                f"run; sink {args.sink}://; simulator in its own process (gunicorn, "
                f"keep-alive), no latency; Redis AOF everysec; worker log level {args.log_level}",
                flush=True,
            )
            runs: list[Run] = []
            for _ in range(args.rounds):
                for kind in ("baseline", "exolegs"):
                    n = len(runs) + 1
                    if kind == "baseline":
                        run = run_baseline(n, args, store, sim, work)
                    else:
                        run = run_ours(n, args, env, store, sim, work)
                    runs.append(run)
                    print(f"  run {n}: {describe(run)}", flush=True)
            report(runs)
            return 0
        except KeyboardInterrupt:
            print("\ninterrupted; stopping workers, the simulator and Redis", file=sys.stderr)
            return 130
        except (RuntimeError, redis.RedisError) as err:
            print(f"FAILED: {err}", file=sys.stderr)
            return 1
        finally:
            if sim is not None:
                sim.shutdown()
            store.stop()


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"({time.monotonic() - started:.0f} s)")
    sys.exit(code)
