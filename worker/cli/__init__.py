"""The ``exolegs`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from redis.exceptions import RedisError

from worker.errors import ExolegsError, SettingsError
from worker.settings import CALL_SID_RE, Settings


def _settings() -> Settings:
    return Settings.from_env()


# ----------------------------------------------------------------- processes
def _web_server() -> Callable[[Settings], None]:
    """The HTTP edge plugs itself in through an entry point: the core never imports web/."""
    (entry,) = entry_points(group="exolegs.processes", name="web")
    server: Callable[[Settings], None] = entry.load()
    return server


def cmd_web(args: argparse.Namespace) -> int:
    settings = _settings()
    if not settings.callback_tokens:
        raise SettingsError("CALLBACK_TOKEN", "must be set before the web process can start")
    _web_server()(settings)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.logs import configure_logging, init_sentry

    settings = _settings()
    configure_logging(settings)
    init_sentry(settings, web=False)
    from celery import signals

    from worker.celery_app import configure
    from worker.checks import Watchdog, worker_start
    from worker.runtime import Runtime

    runtime = Runtime(settings)
    runtime.sinks  # noqa: B018 - fail now, in one line, on a bad sink URL
    watch = worker_start(runtime.redis)  # refuses a Redis that may evict
    app = configure(settings)
    import worker.tasks  # noqa: F401 - registers the tasks

    argv = [
        "worker",
        "-Q",
        "exolegs",
        "--loglevel",
        settings.log_level,
        "--without-gossip",
        "--without-mingle",
    ]
    concurrency = args.concurrency or settings.worker_concurrency
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    if args.pool:
        argv += ["--pool", args.pool]
    controllers: list[Any] = []
    signals.worker_init.connect(lambda sender=None, **_: controllers.append(sender), weak=False)
    from worker.sinks import fleet

    # Announce our sinks before any work, so deliveries get booked for them.
    ours = [(a, name) for a in runtime.accounts for name in runtime.sinks_of(a)]
    announce = lambda: fleet.announce(runtime.redis, ours)  # noqa: E731
    watchdog = Watchdog(watch, fleet.ANNOUNCE_SECONDS, chores=[announce])
    watchdog.look()
    signals.worker_ready.connect(lambda **_: watchdog.start(), weak=False)
    app.worker_main(argv)
    # worker_main drops Celery's exit status; a supervisor must see a crash as one.
    return int(getattr(controllers[-1], "exitcode", 0) or 0) if controllers else 1


def cmd_dev(args: argparse.Namespace) -> int:
    from worker.cli.dev import run_dev

    return run_dev(simulate=args.simulate)


def cmd_simulate(args: argparse.Namespace) -> int:
    from worker.calls.simulator import SimAccount, SimulatorConfig, serve
    from worker.settings import parse_rate

    rate = parse_rate("--rate-limit", args.rate_limit) if args.rate_limit else None
    extra = []
    for spec in args.account or []:
        sid, _, rest = spec.partition(":")
        key, _, token = rest.partition(":")
        if not (sid and key and token) or not CALL_SID_RE.fullmatch(sid):
            raise SettingsError("--account", f"expected SID:KEY:TOKEN, got {spec!r}")
        extra.append(SimAccount(sid, key, token, rate))
    config = SimulatorConfig(
        latency_ms=args.latency_ms,
        fail_rate=args.fail_rate,
        fail_code=args.fail_code,
        rate_limit=rate,
        accounts=tuple(extra),
    )
    served = ", ".join(
        f"account {a.sid}, key {a.api_key}, token {a.api_token}"
        for a in config.all_accounts.values()
    )
    print(f"Exotel simulator on http://{args.host}:{args.port} ({served})", flush=True)
    serve(config, host=args.host, port=args.port)
    return 0


# ---------------------------------------------------------------- one-shots
def cmd_fetch(args: argparse.Namespace) -> int:
    from worker.calls.intake import terminal_callback
    from worker.pipeline import build_call_record
    from worker.runtime import Runtime

    if not CALL_SID_RE.fullmatch(args.call_sid):
        raise SettingsError("CALL_SID", "must be letters, digits, '_' or '-' (at most 64)")
    rt = Runtime(_settings())
    account = rt.account(args.account or rt.first_account).name
    try:
        callback = terminal_callback(rt.redis, args.call_sid, account)
    except RedisError:
        callback = ({}, None, None)  # the callback is optional for a manual fetch
    legs = rt.exotel_for(account).fetch_legs(args.call_sid)
    record = build_call_record(rt, legs, callback, account)
    print(json.dumps(record, indent=2, ensure_ascii=False))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from worker.checks import acknowledge_wipe, run_check

    if args.ack_wipe:
        from worker.runtime import connect

        settings = _settings()
        cleared = acknowledge_wipe(connect(settings))
        print("wipe notice cleared" if cleared else "no wipe notice to clear")
    return run_check()


# ------------------------------------------------------------- dead letters
def _dead(args: argparse.Namespace) -> tuple[Any, str | None]:
    """The dead letters, and the account --account names (checked), if any."""
    from worker.runtime import Runtime

    rt = Runtime(_settings())
    account = rt.account(args.account).name if getattr(args, "account", None) else None
    return rt.dead, account


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts else "-"


def cmd_dead_list(args: argparse.Namespace) -> int:
    dead, account = _dead(args)
    letters = list(dead.listed(account))
    if args.json:
        print(json.dumps([_dead_json(d) for d in letters], indent=2))
        return 0
    if not letters:
        print("no dead letters")
        return 0
    print(
        f"{'CALL SID':34} {'ACCOUNT':10} {'SINK':14} {'ATTEMPTS':>8}  FAILED AT             REASON"
    )
    for d in letters:
        print(
            f"{d.call_sid:34} {d.account:10} {d.sink or '(fetch)':14} {d.attempts:>8}  "
            f"{_when(d.failed_at):20}  {d.reason}: {d.last_error[:80]}"
        )
    return 0


def _dead_json(d: Any) -> dict[str, Any]:
    out: dict[str, Any] = d.to_json()
    out["failed_at"] = _when(d.failed_at)
    out["first_attempt_at"] = _when(d.first_attempt_at)
    out["last_attempt_at"] = _when(d.last_attempt_at)
    return out


def cmd_dead_show(args: argparse.Namespace) -> int:
    dead, account = _dead(args)
    letters = dead.for_call(args.call_sid, account)
    if not letters:
        print(f"no dead letter for call {args.call_sid}", file=sys.stderr)
        return 1
    print(json.dumps([_dead_json(d) for d in letters], indent=2, ensure_ascii=False))
    return 0


def cmd_dead_replay(args: argparse.Namespace) -> int:
    dead, account = _dead(args)
    if args.all:
        letters = list(dead.listed(account))
    elif args.call_sid:
        letters = dead.for_call(args.call_sid, account)
    else:
        raise SettingsError("dead replay", "give a CALL_SID or --all")
    total = len(letters)
    for n, letter in enumerate(letters, 1):
        dead.replay(letter, force=args.force)
        if total > 20 and (n % 50 == 0 or n == total):
            print(f"replayed {n}/{total}", file=sys.stderr, flush=True)
    print(f"replayed {total} dead letter(s){' (forced past the ledger)' if args.force else ''}")
    return 0 if total or args.all else 1


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    try:
        return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(
            f"expected a duration like 30d or 12h, got {text!r}"
        ) from None


def cmd_dead_purge(args: argparse.Namespace) -> int:
    dead, account = _dead(args)
    removed = dead.purge(args.older_than, account)
    print(f"purged {removed} dead letter(s)")
    return 0


# -------------------------------------------------------------------- sinks
def cmd_sinks_list(args: argparse.Namespace) -> int:
    from worker.cli.sinks import list_sinks

    for row in list_sinks():
        print(f"{row.get('name', ''):12} {row.get('url_help') or row.get('error', '')}")
    return 0


def cmd_sinks_check(args: argparse.Namespace) -> int:
    from worker.cli.sinks import check_sinks
    from worker.runtime import connect

    settings = _settings()
    ok_all = True
    for name, ok, message in check_sinks(settings, connect(settings)):
        ok_all &= ok
        print(f"{'ok  ' if ok else 'FAIL'} {name:14} {message}")
    return 0 if ok_all else 1


# --------------------------------------------------------------------- main
ACCOUNT_HELP = "only this account's (a name from EXOTEL_ACCOUNTS, or 'default'), e.g. north"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exolegs", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("web", help="serve the callback endpoint (gunicorn)").set_defaults(func=cmd_web)
    w = sub.add_parser("worker", help="run the Celery worker")
    w.add_argument("--concurrency", type=int)
    w.add_argument("--pool", choices=["prefork", "threads", "solo"])
    w.set_defaults(func=cmd_worker)
    d = sub.add_parser("dev", help="web + worker on this machine, Redis found or started")
    d.add_argument("--simulate", action="store_true", help="also run the Exotel simulator")
    d.set_defaults(func=cmd_dev)
    f = sub.add_parser("fetch", help="fetch and print one call's enriched record")
    f.add_argument("call_sid")
    f.add_argument("--account", help=ACCOUNT_HELP + " (default: the first configured)")
    f.set_defaults(func=cmd_fetch)
    s = sub.add_parser("simulate", help="a local fake of Exotel's v3 legs API")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8099)
    s.add_argument("--latency-ms", type=float, default=0.0)
    s.add_argument("--fail-rate", type=float, default=0.0)
    s.add_argument("--fail-code", type=int, default=10715)
    s.add_argument("--rate-limit", help="e.g. 200/minute: answer 429/10724 beyond it (per account)")
    s.add_argument(
        "--account",
        action="append",
        metavar="SID:KEY:TOKEN",
        help="serve one more account with its own credentials, e.g. acme_north:k1:t1",
    )
    s.set_defaults(func=cmd_simulate)
    c = sub.add_parser(
        "check",
        help="print the effective configuration, secrets masked, and check Redis is safe",
        description="Exit 1 on a problem, e.g. a Redis maxmemory-policy other than noeviction. "
        "Example: exolegs check",
    )
    c.add_argument(
        "--ack-wipe",
        action="store_true",
        help="clear the notice that Redis was wiped, once you have checked the sinks",
    )
    c.set_defaults(func=cmd_check)
    dead = sub.add_parser("dead", help="dead letters").add_subparsers(dest="dead", required=True)
    dl = dead.add_parser("list")
    dl.add_argument("--json", action="store_true")
    dl.add_argument("--account", help=ACCOUNT_HELP)
    dl.set_defaults(func=cmd_dead_list)
    ds = dead.add_parser("show")
    ds.add_argument("call_sid")
    ds.add_argument("--account", help=ACCOUNT_HELP)
    ds.set_defaults(func=cmd_dead_show)
    dr = dead.add_parser("replay")
    dr.add_argument("call_sid", nargs="?")
    dr.add_argument("--all", action="store_true")
    dr.add_argument("--force", action="store_true", help="deliver even where the ledger has it")
    dr.add_argument("--account", help=ACCOUNT_HELP)
    dr.set_defaults(func=cmd_dead_replay)
    dp = dead.add_parser("purge")
    dp.add_argument("--older-than", type=_duration, required=True, help="e.g. 30d")
    dp.add_argument("--account", help=ACCOUNT_HELP)
    dp.set_defaults(func=cmd_dead_purge)
    from worker.cli.backfill import add_parser as add_backfill

    add_backfill(sub)
    sinks = sub.add_parser("sinks", help="sinks").add_subparsers(dest="sinks", required=True)
    sinks.add_parser("list").set_defaults(func=cmd_sinks_list)
    sinks.add_parser("check").set_defaults(func=cmd_sinks_check)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except SettingsError as err:
        print(f"exolegs: {err}", file=sys.stderr)
        return 2
    except ExolegsError as err:
        print(f"exolegs: {err.message}", file=sys.stderr)
        return 1
    except RedisError as err:
        from worker.redact import mask_url

        url = mask_url(Settings.from_env().redis_url)
        print(f"exolegs: cannot reach Redis at {url} ({err}); is it running?", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
