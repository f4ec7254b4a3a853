"""``exolegs dev``: the whole service on one machine, with whatever Redis it can find.

Redis: ``REDIS_URL`` when it answers; else ``redis-server`` from PATH with its
data under ``./var/redis``; else an embedded, in-process Redis-compatible
server (fakeredis), announced as non-durable. Without Exotel credentials (or
with ``--simulate``) the Exotel simulator runs too and the worker uses it.
Web and worker run as the same two commands production uses.
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
from pathlib import Path
from typing import Any

import redis

from worker.errors import SettingsError
from worker.settings import Settings

VAR = Path("var")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reachable(url: str) -> bool:
    try:
        from worker.runtime import connect

        return bool(connect(url).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def find_redis(settings: Settings) -> tuple[str, str, Any]:
    """(url, description, handle to stop) for the first Redis that works."""
    if _reachable(settings.redis_url):
        return settings.redis_url, "Redis at REDIS_URL", None
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
        )
        for _ in range(100):
            if _reachable(url):
                return url, f"redis-server (data in {data}/)", proc
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
    return url, "EMBEDDED in-process Redis (NOT durable: queued work is lost on exit)", server


def dev_token() -> str:
    """A stable callback token for this checkout, so the pasted URL keeps working."""
    path = VAR / "dev-callback-token"
    if path.is_file():
        return path.read_text().strip()
    VAR.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


def run_dev(*, simulate: bool = False) -> int:
    settings = Settings.from_env()
    env = dict(os.environ)
    url, redis_desc, redis_handle = find_redis(settings)
    env["REDIS_URL"] = url
    env.pop("REDIS_TLS_URL", None)
    if not settings.callback_tokens:
        env["CALLBACK_TOKEN"] = dev_token()
    token = env["CALLBACK_TOKEN"].split(",")[0].strip()
    env.setdefault("FETCH_DELAY_SECONDS", "2")
    env.setdefault("SPOOL_DIR", str(VAR / "spool"))
    sim = None
    if simulate or not settings.exotel_configured:
        from worker.calls.simulator import SimulatorConfig, start_in_thread

        config = SimulatorConfig()
        sim, sim_url = start_in_thread(config)
        env.update(
            EXOTEL_BASE_URL=sim_url,
            EXOTEL_ACCOUNT_SID=config.account_sid,
            EXOTEL_API_KEY=config.api_key,
            EXOTEL_API_TOKEN=config.api_token,
        )
        why = "--simulate" if simulate else "no Exotel credentials configured"
        print(f"exolegs dev: Exotel SIMULATOR at {sim_url} ({why})")
    print(f"exolegs dev: Redis: {redis_desc} at {url}")
    Settings.from_env(env, dotenv=False)  # one clear line now, not two tracebacks later
    exe = [sys.executable, "-m", "worker.cli"]
    procs = [
        subprocess.Popen([*exe, "worker", "--concurrency", "2"], env=env),
        subprocess.Popen([*exe, "web"], env=env),
    ]
    port = env.get("PORT", str(settings.port))
    callback = f"http://localhost:{port}/exotel/callback/{token}"
    sinks = env.get("SINKS", "jsonl://./var/calls.jsonl")
    print(
        f"""
exolegs dev: serving on http://localhost:{port}  (sinks: {sinks})

  Callback URL (paste into Exotel as StatusCallback / Passthru / status_callback):
    {callback}

  Send a sample callback:
    curl -s -X POST '{callback}' \\
      -d CallSid=demo$(date +%s) -d Status=completed -d EventType=terminal \\
      -d Direction=outbound-api -d From=09876543210 -d To=09123456789

  Records appear in ./var/calls.jsonl after FETCH_DELAY_SECONDS={env["FETCH_DELAY_SECONDS"]}s.
  Ctrl-C stops everything.
""",
        flush=True,
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
        elif redis_handle is not None:
            redis_handle.shutdown()
    return code
