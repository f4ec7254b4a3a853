"""``exolegs dev``: the whole service on one machine.

Redis: ``REDIS_URL`` only when the user set it (environment or ``.env``);
else a ``redis-server`` of its own from PATH with its data under
``./var/redis``; else an embedded, in-process Redis-compatible server
(fakeredis, the ``embedded`` extra), announced as non-durable. Without Exotel
credentials (or with ``--simulate``) the Exotel simulator runs too and the
worker uses it. Web and worker run as the same two commands production uses;
web listens on 127.0.0.1 unless told otherwise. What it chose is written to
``var/dev.env`` for a second terminal (see :mod:`worker.cli.devenv`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import redis

from worker.cli.devenv import DEV_ENV, dev_values, explicit_env, write_dev_env, write_private
from worker.errors import SettingsError
from worker.opsusers import dev_banner, dev_password
from worker.redact import mask_url, scrub
from worker.settings import Settings

VAR = Path("var")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reachable(url: Settings | str) -> bool:
    try:
        from worker.runtime import connect

        return bool(connect(url).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def find_redis(explicit: Mapping[str, str], settings: Settings) -> tuple[str, str, Any]:
    """(url, what it is in plain words, handle to stop) for the Redis this dev instance uses.

    ``REDIS_URL`` (or ``REDIS_TLS_URL``) only when the user set it, in the
    environment or ``.env``; then it must answer. Otherwise a redis-server of
    its own with its data under ./var/redis, else the embedded one. Never the
    default localhost:6379, which may be somebody else's.
    """
    for name in ("REDIS_TLS_URL", "REDIS_URL"):
        if name in explicit:
            where = "the environment" if os.environ.get(name, "").strip() else ".env"
            if not _reachable(settings):
                raise SettingsError(
                    name,
                    f"is set in {where} but nothing answers at {mask_url(settings.redis_url)}: "
                    f"start that Redis, or unset {name} and exolegs dev starts its own",
                )
            return settings.redis_url, f"{name} from {where}", None
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    binary = shutil.which("redis-server")
    if binary:
        data = VAR / "redis"
        data.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(data.resolve()),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C must not stop Redis before the worker is done
        )
        for _ in range(100):
            if _reachable(url):
                return url, f"its own redis-server, data kept in {data}/", proc
            time.sleep(0.05)
        proc.kill()
    try:
        from fakeredis import TcpFakeServer
    except ImportError:
        raise SettingsError(
            "REDIS_URL",
            "is not set, no redis-server is on PATH and the embedded Redis is not installed: "
            "install redis-server, or run `make run` (it installs the embedded one), "
            "or set REDIS_URL",
        ) from None
    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    why = "no redis-server on PATH" if not binary else "redis-server did not start"
    return (
        url,
        f"embedded in this process ({why}); NOT durable: queued work is lost when dev stops",
        server,
    )


def dev_token() -> str:
    """A stable callback token for this checkout, so the pasted URL keeps working."""
    path = VAR / "dev-callback-token"
    if path.is_file():
        return path.read_text().strip()
    token = secrets.token_urlsafe(24)
    write_private(path, token + "\n")
    return token


def _stored_callbacks(redis_url: str) -> Callable[[str], Mapping[str, Any] | None]:
    """The simulator's view of the callbacks the edge stored, so its legs match them."""
    from worker.calls.intake import terminal_callback
    from worker.runtime import connect

    client = connect(redis_url)

    def lookup(call_sid: str) -> Mapping[str, Any] | None:
        fields, _status, _direction = terminal_callback(client, call_sid)
        return fields or None

    return lookup


def _banner_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def banner(
    settings: Settings, *, exotel: str, redis: str, host: str, ops_password: str | None = None
) -> str:
    """What dev prints once everything is started: every secret masked but the callback token.

    ``ops_password``: the console's dev password, made by dev, printed too.
    """
    shown = _banner_host(host)
    tokens = [token for token, _, _ in settings.token_accounts]
    callback = f"http://{shown}:{settings.port}/exotel/callback/{tokens[0]}"
    sinks = ", ".join(mask_url(s) for s in settings.sinks)
    delay, cli = settings.fetch_delay_seconds, ".venv/bin/exolegs"
    text = f"""
exolegs dev: Exotel: {exotel}
exolegs dev: Redis: {redis}
exolegs dev: serving on http://{shown}:{settings.port}  (sinks: {sinks})

  Callback URL (paste into Exotel as StatusCallback / Passthru / status_callback):
    {callback}

  Send a sample callback (its From and To become the record's numbers):
    curl -s -X POST '{callback}' \\
      -d CallSid=demo$(date +%s) -d Status=completed -d EventType=terminal \\
      -d Direction=outbound-api -d From=09876543210 -d To=09123456789

  {dev_banner(f"http://{shown}:{settings.port}", ops_password) if settings.ops_enabled else ""}
  Records reach the sinks {delay:g}s after the callback (FETCH_DELAY_SECONDS).
  In a second terminal here, {cli} check, dead list, fetch and sinks check reach this instance.
  Ctrl-C stops everything.
"""
    if len(settings.all_accounts) > 1:
        urls = "".join(
            f"\n    account {a.name}: http://{shown}:{settings.port}/exotel/callback/"
            f"{a.callback_tokens[0]}"
            for a in settings.all_accounts
            if a.callback_tokens
        )
        text += f"  Each account has its own callback URL:{urls}\n"
    shown_secrets = {*tokens, ops_password}
    return scrub(text, [s for s in settings.secrets() if s not in shown_secrets])


def run_dev(*, simulate: bool = False, host: str = "127.0.0.1") -> int:
    explicit = explicit_env()
    settings = Settings.from_env()
    env = dict(os.environ)
    chosen: dict[str, str] = {}  # what this instance sets; var/dev.env tells a second terminal
    url, redis_desc, redis_handle = find_redis(explicit, settings)
    env.pop("REDIS_TLS_URL", None)
    env["REDIS_URL"] = url
    if redis_handle is not None:
        chosen["REDIS_URL"] = url
    if not settings.any_callback_token:
        chosen["CALLBACK_TOKEN"] = dev_token()
    if not settings.ops_enabled:
        chosen["OPS_PASSWORD"] = dev_password(VAR)
    for name, value in (("FETCH_DELAY_SECONDS", "2"), ("SPOOL_DIR", str(VAR / "spool"))):
        if name not in explicit:
            chosen[name] = value
    sim = None
    if simulate or not any(a.configured for a in settings.all_accounts):
        from worker.calls.simulator import SimulatorConfig, start_in_thread

        config = SimulatorConfig(callbacks=_stored_callbacks(url))
        sim, sim_url = start_in_thread(config)
        chosen.update(
            EXOTEL_BASE_URL=sim_url,
            EXOTEL_ACCOUNT_SID=config.account_sid,
            EXOTEL_API_KEY=config.api_key,
            EXOTEL_API_TOKEN=config.api_token,
        )
        why = "--simulate" if simulate else "no Exotel credentials configured"
        exotel_desc = f"the simulator at {sim_url} ({why})"
    else:
        exotel_desc = f"{settings.exotel_url}, account {settings.exotel_account_sid}"
    if "PORT" not in explicit:
        chosen["PORT"] = str(settings.port)
    env.update(chosen)
    final = Settings.from_env(explicit_env(env))  # one clear line now, not tracebacks later
    exe = [sys.executable, "-m", "worker.cli"]
    # Each child in its own session: Ctrl-C reaches only this process, which then
    # stops each child once (a terminal's SIGINT to the whole group would make the
    # worker shut down twice, and Redis stop under it).
    procs = [
        subprocess.Popen([*exe, "worker", "--concurrency", "2"], env=env, start_new_session=True),
        subprocess.Popen([*exe, "web", "--host", host], env=env, start_new_session=True),
    ]
    write_dev_env(chosen, pid=os.getpid())
    print(
        banner(
            final,
            exotel=exotel_desc,
            redis=f"{redis_desc} ({mask_url(url)})",
            host=host,
            ops_password=chosen.get("OPS_PASSWORD"),
        )
    )
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = 0
    try:
        while not stopping:
            for proc in procs:
                if proc.poll() is not None:
                    print(f"exolegs dev: a child exited with {proc.returncode}; stopping")
                    code = proc.returncode or 1
                    stopping = True
            time.sleep(0.3)
    finally:
        if dev_values()[0] == os.getpid():
            DEV_ENV.unlink(missing_ok=True)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(25)
            except subprocess.TimeoutExpired:
                proc.kill()
        if sim is not None:
            sim.shutdown()
        if isinstance(redis_handle, subprocess.Popen):
            redis_handle.terminate()
            redis_handle.wait(10)
        elif redis_handle is not None:
            redis_handle.shutdown()
    return code
