"""The ``exolegs`` command line: every command and option has help, each ends with an example."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from redis.exceptions import RedisError

from worker.errors import ExolegsError, SettingsError
from worker.settings import CALL_SID_RE, Settings


def _settings() -> Settings:
    return Settings.from_env()


# ----------------------------------------------------------------- processes
def _web_server() -> Callable[..., None]:
    """The HTTP edge plugs itself in through an entry point: the core never imports web/."""
    (entry,) = entry_points(group="exolegs.processes", name="web")
    server: Callable[..., None] = entry.load()
    return server


def cmd_web(args: argparse.Namespace) -> int:
    from worker.logs import configure_logging
    from worker.redact import mask_url

    settings = _settings()
    if not settings.callback_tokens:
        raise SettingsError("CALLBACK_TOKEN", "must be set before the web process can start")
    configure_logging(settings)
    host = "127.0.0.1" if args.host in ("localhost", "") else args.host
    accounts = settings.all_accounts
    logging.getLogger("exolegs.web").info(
        "exolegs web listening on http://%s:%d (%d workers; sinks: %s)",
        host,
        settings.port,
        settings.web_concurrency,
        ", ".join(mask_url(s) for s in dict.fromkeys(u for a in accounts for u in a.sinks)),
    )
    _web_server()(settings, bind=f"{host}:{settings.port}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.logs import configure_logging, init_sentry

    settings = _settings()
    configure_logging(settings)
    init_sentry(settings, web=False)
    from celery import signals
    from celery.exceptions import SecurityWarning

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
    # Celery warns whenever it runs as root (containers, CI): what it guards
    # against is pickle from the broker, and this app accepts JSON only.
    warnings.filterwarnings("ignore", category=SecurityWarning, module="celery.platforms")
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

    return run_dev(simulate=args.simulate, host=args.host)


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
        legs_ready_after=args.legs_ready_after,
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
    from worker.cli.progress import Progress

    dead, account = _dead(args)
    if args.all:
        letters = list(dead.listed(account))
    elif args.call_sid:
        letters = dead.for_call(args.call_sid, account)
    else:
        raise SettingsError("dead replay", "give a CALL_SID or --all")
    with Progress("replaying", total=len(letters)) as progress:
        for letter in letters:
            dead.replay(letter, force=args.force)
            progress.advance()
    forced = " (forced past the ledger)" if args.force else ""
    print(f"replayed {len(letters)} dead letter(s){forced}")
    return 0 if letters or args.all else 1


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    try:
        return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(
            f"expected a duration like 30d or 12h, got {text!r}"
        ) from None


def cmd_dead_purge(args: argparse.Namespace) -> int:
    from worker.cli.progress import Progress

    dead, account = _dead(args)
    with Progress("purging") as progress:
        removed = dead.purge(args.older_than, account, on_progress=progress.advance)
    print(f"purged {removed} dead letter(s)")
    return 0


# -------------------------------------------------------------------- sinks
def cmd_sinks_list(args: argparse.Namespace) -> int:
    from worker.cli.sinks import list_sinks

    for row in list_sinks():
        what = row.get("url_help") or row.get("error", "")
        print(f"{row.get('name', ''):12} {row.get('package', ''):22} {what}")
        if row.get("note"):
            print(f"{'':12} {'':22} note: {row['note']}")
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


DESCRIPTION = """Turn Exotel call-completion callbacks into call records in your CRM.

Every setting comes from the environment or a .env file in this directory
(docs/configuration.md). Run in the directory of a running `exolegs dev`, the
one-shot commands (check, fetch, dead, sinks) use its Redis, token and
simulator for whatever the environment and .env leave unset (var/dev.env)."""

#: Commands that act on a running service and may borrow a running dev instance's settings.
ONE_SHOTS = {"fetch", "check", "dead", "sinks", "backfill"}


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks and shows each option's default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            action.default not in (None, False, argparse.SUPPRESS)
            and "%(default)" not in text
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


def _command(
    sub: Any, name: str, summary: str, example: str, func: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    """A subcommand whose help ends with an example."""
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=f"example:\n  {example}",
        formatter_class=_Formatter,
    )
    p.set_defaults(func=func)
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("exolegs")
    except PackageNotFoundError:
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="exolegs",
        description=DESCRIPTION,
        epilog="`exolegs COMMAND --help` explains each command.\n\nexample:\n  exolegs check",
        formatter_class=_Formatter,
    )
    p.add_argument("--version", action="version", version=f"exolegs {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    web = _command(
        sub,
        "web",
        "serve the callback endpoint under gunicorn, on $PORT with $WEB_CONCURRENCY workers",
        "PORT=8000 exolegs web",
        cmd_web,
    )
    web.add_argument(
        "--host", default="0.0.0.0", help="address to listen on; 127.0.0.1 for this machine only"
    )

    w = _command(
        sub,
        "worker",
        "run the Celery worker that fetches legs and delivers records, on the exolegs queue",
        "exolegs worker --concurrency 4",
        cmd_worker,
    )
    w.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="worker processes or threads (default: WORKER_CONCURRENCY, else one per core)",
    )
    w.add_argument(
        "--pool",
        choices=["prefork", "threads", "solo"],
        help="Celery execution pool (default: prefork)",
    )

    d = _command(
        sub,
        "dev",
        "run web, worker, a Redis and (without Exotel credentials) the Exotel simulator here",
        "exolegs dev --simulate",
        cmd_dev,
    )
    d.add_argument(
        "--simulate",
        action="store_true",
        help="use the Exotel simulator even when Exotel credentials are configured",
    )
    d.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the web process listens on; 0.0.0.0 to accept other machines",
    )

    f = _command(
        sub,
        "fetch",
        "fetch one call's legs from Exotel now and print its record (delivers nothing)",
        "exolegs fetch 8f9a1c0e2b7d4e6f9a1c0e2b7d4e6f9a",
        cmd_fetch,
    )
    f.add_argument("call_sid", metavar="CALL_SID", help="the call's Sid, as in the callback")
    f.add_argument("--account", help=ACCOUNT_HELP + " (default: the first configured)")

    s = _command(
        sub,
        "simulate",
        "serve a local fake of Exotel's v3 Call Legs API",
        "exolegs simulate --port 8099 --fail-rate 0.1",
        cmd_simulate,
    )
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", type=int, default=8099, help="TCP port to listen on")
    s.add_argument(
        "--latency-ms", type=float, default=0.0, metavar="MS", help="delay added to each answer"
    )
    s.add_argument(
        "--fail-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="share of requests (0 to 1) answered with an error",
    )
    s.add_argument(
        "--fail-code",
        type=int,
        default=10715,
        metavar="CODE",
        help="Exotel error code of those errors",
    )
    s.add_argument(
        "--legs-ready-after",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="answer 500/10743 (legs not ready) until this long after a call ended, e.g. 90",
    )
    s.add_argument(
        "--rate-limit",
        metavar="N/PERIOD",
        help="answer 429/10724 beyond this rate, per account, e.g. 200/minute (default: no limit)",
    )
    s.add_argument(
        "--account",
        action="append",
        metavar="SID:KEY:TOKEN",
        help="serve one more account with its own credentials, e.g. acme_north:k1:t1",
    )

    c = _command(
        sub,
        "check",
        "print the effective configuration, secrets masked, and check Redis is safe; "
        "exit 1 on a problem, e.g. a Redis maxmemory-policy other than noeviction",
        "exolegs check",
        cmd_check,
    )
    c.add_argument(
        "--ack-wipe",
        action="store_true",
        help="clear the notice that Redis was wiped, once you have checked the sinks",
    )

    dead = sub.add_parser(
        "dead",
        help="list, show, replay or purge dead letters (work that ran out of retries)",
        description="Dead letters: work that ran out of retries or can never succeed.",
        epilog="example:\n  exolegs dead list",
        formatter_class=_Formatter,
    ).add_subparsers(dest="dead", required=True, metavar="ACTION")
    dl = _command(
        dead, "list", "list dead letters, oldest first", "exolegs dead list", cmd_dead_list
    )
    dl.add_argument("--json", action="store_true", help="print JSON instead of a table")
    dl.add_argument("--account", help=ACCOUNT_HELP)
    ds = _command(
        dead,
        "show",
        "print one call's dead letters in full, as JSON",
        "exolegs dead show 8f9a1c0e2b7d4e6f9a1c0e2b7d4e6f9a",
        cmd_dead_show,
    )
    ds.add_argument("call_sid", metavar="CALL_SID", help="the call whose dead letters to show")
    ds.add_argument("--account", help=ACCOUNT_HELP)
    dr = _command(
        dead,
        "replay",
        "queue dead letters again, now, with a fresh attempt count",
        "exolegs dead replay --all",
        cmd_dead_replay,
    )
    dr.add_argument("call_sid", nargs="?", metavar="CALL_SID", help="replay this call's letters")
    dr.add_argument("--all", action="store_true", help="replay every dead letter")
    dr.add_argument(
        "--force",
        action="store_true",
        help="deliver again even to sinks whose ledger says they already have the call",
    )
    dr.add_argument("--account", help=ACCOUNT_HELP)
    dp = _command(
        dead,
        "purge",
        "delete dead letters older than a duration",
        "exolegs dead purge --older-than 30d",
        cmd_dead_purge,
    )
    dp.add_argument(
        "--older-than",
        type=_duration,
        required=True,
        metavar="DURATION",
        help="age such as 30d, 12h, 90m or 3600 (seconds)",
    )
    dp.add_argument("--account", help=ACCOUNT_HELP)

    from worker.cli.backfill import add_parser as add_backfill

    add_backfill(sub)

    sinks = sub.add_parser(
        "sinks",
        help="list the installed sinks or check the configured ones",
        description="The sinks records are delivered to (SINKS).",
        epilog="example:\n  exolegs sinks check",
        formatter_class=_Formatter,
    ).add_subparsers(dest="sinks", required=True, metavar="ACTION")
    _command(
        sinks,
        "list",
        "list every installed sink and the URL it takes",
        "exolegs sinks list",
        cmd_sinks_list,
    )
    _command(
        sinks,
        "check",
        "build each sink in SINKS and check it can deliver; exit 1 if one cannot",
        "exolegs sinks check",
        cmd_sinks_check,
    )
    return p


def _borrow_dev_settings() -> None:
    """For a one-shot command, take what is unset from a running ``exolegs dev`` here."""
    from worker.cli.devenv import DEV_ENV, apply_dev_env, describe, explicit_env

    taken = apply_dev_env()
    if not ({"REDIS_URL", "REDIS_TLS_URL"} & (set(taken) | set(explicit_env()))):
        default = Settings().redis_url
        print(
            f"exolegs: REDIS_URL is not set and no exolegs dev runs here: using {default}",
            file=sys.stderr,
        )
    if taken:
        print(
            f"exolegs: using the dev instance running here ({DEV_ENV}: {describe(taken)})",
            file=sys.stderr,
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command in ONE_SHOTS:
            _borrow_dev_settings()
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
