"""No secret is ever printed: real traffic at LOG_LEVEL=DEBUG, then every byte searched.

A real ``exolegs web`` (gunicorn, access log on) and a real ``exolegs worker``
run against a simulator with distinctive Exotel credentials, a JSONL sink and a
webhook sink whose receiver refuses every delivery (so the worker dead-letters
and logs an error, which becomes a Sentry event sent to a fake Sentry). Then
``exolegs check``, ``exolegs sinks list``, ``exolegs dead list`` / ``show`` and
``exolegs fetch`` run as subprocesses. Every log line, every CLI output, every
Sentry envelope and every request the webhook receiver got is searched for each
secret, plain, base64 (the Basic headers) and percent-encoded.
"""

from __future__ import annotations

import base64
import gzip
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
import requests

from tests.support.processes import ROOT, read_jsonl, start_web, start_worker, wait_for
from tests.support.redis_server import free_port
from worker.calls.simulator import SimulatorConfig, start_in_thread

API_KEY = "exo-key-7f3a91"
API_TOKEN = "exo-api-token-5b1e8c0d9a7f6e42"
NEW_TOKEN = "cb-new-token-4d2f0a9e8b7c6d5e"
OLD_TOKEN = "cb-old-token-9e8d7c6b5a4f3e2d"
BASIC_USER = "exotel"
BASIC_PASSWORD = "basic-pw-c0ffee-1234"
DSN_KEY = "f00dfacef00dfacef00dfacef00dface"
WEBHOOK_SECRET = "whsec_+/+/c2VjcmV0LWtlef/+IHBsdXM="


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Recorder(ThreadingHTTPServer):
    """A tiny HTTP server that keeps every request and answers with a fixed status."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.requests: list[bytes] = []  # request line and body
        self.headers: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                outer.requests.append(self.requestline.encode() + b"\n" + body)
                outer.headers.append(bytes(self.headers))
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def text(self, *, headers: bool = True) -> str:
        parts = [*self.requests, *(self.headers if headers else [])]
        return b"\n".join(parts).decode("utf-8", "replace")


@pytest.fixture
def receivers() -> Iterator[tuple[Recorder, Recorder]]:
    sentry, webhook = Recorder(200), Recorder(400)
    yield sentry, webhook
    for server in (sentry, webhook):
        server.shutdown()
        server.server_close()


@pytest.fixture
def secret_env(
    env: dict[str, str], redis_client: redis.Redis, receivers: tuple[Recorder, Recorder],
    tmp_path: Path,
) -> Iterator[dict[str, str]]:
    sentry, webhook = receivers
    sim, sim_url = start_in_thread(
        SimulatorConfig(account_sid="acme_secret", api_key=API_KEY, api_token=API_TOKEN)
    )
    yield {
        **env,
        "EXOTEL_BASE_URL": sim_url,
        "EXOTEL_ACCOUNT_SID": "acme_secret",
        "EXOTEL_API_KEY": API_KEY,
        "EXOTEL_API_TOKEN": API_TOKEN,
        "EXOTEL_TIMEOUT_SECONDS": "3",
        "CALLBACK_TOKEN": f"{NEW_TOKEN},{OLD_TOKEN}",
        "CALLBACK_BASIC_AUTH": f"{BASIC_USER}:{BASIC_PASSWORD}",
        "SENTRY_DSN": f"http://{DSN_KEY}@127.0.0.1:{sentry.port}/42",
        "SINKS": (
            f"jsonl://{tmp_path}/calls.jsonl "
            f"webhook+http://127.0.0.1:{webhook.port}/hooks/exolegs?secret={WEBHOOK_SECRET}"
        ),
        "LOG_LEVEL": "DEBUG",
        "RETRY_MAX_ATTEMPTS": "2",
    }
    sim.shutdown()


def secrets() -> dict[str, str]:
    """Name -> value of everything that must never be printed, in each printable form."""
    plain = {
        "Exotel API token": API_TOKEN,
        "Exotel Basic header": b64(f"{API_KEY}:{API_TOKEN}"),
        "new callback token": NEW_TOKEN,
        "old callback token": OLD_TOKEN,
        "callback Basic password": BASIC_PASSWORD,
        "callback Basic header": b64(f"{BASIC_USER}:{BASIC_PASSWORD}"),
        "Sentry DSN key": DSN_KEY,
        "webhook secret": WEBHOOK_SECRET,
        "webhook secret key": WEBHOOK_SECRET.removeprefix("whsec_"),
    }
    found = dict(plain)
    for name, value in plain.items():
        if quote(value, safe="") != value:
            found[f"{name} (percent-encoded)"] = quote(value, safe="")
    return found


def run_cli(env: dict[str, str], cwd: Path, *args: str) -> str:
    """One ``exolegs`` command, from a directory without a ``.env`` to pick up."""
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )
    return f"$ exolegs {' '.join(args)} -> {result.returncode}\n{result.stdout}{result.stderr}"


def test_nothing_printed_anywhere_contains_a_secret(
    secret_env: dict[str, str],
    receivers: tuple[Recorder, Recorder],
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    sentry, webhook = receivers
    port = free_port()
    web = start_web(secret_env, tmp_path / "web.log", port)
    worker = start_worker(secret_env, tmp_path / "worker.log")
    base = f"http://127.0.0.1:{port}"
    auth = (BASIC_USER, BASIC_PASSWORD)
    try:
        def callback(token: str, sid: str, **kwargs: object) -> int:
            data = {"CallSid": sid, "Status": "completed", "EventType": "terminal",
                    "Direction": "outbound-api"}
            return requests.post(f"{base}/exotel/callback/{token}", data=data, timeout=5,
                                 **kwargs).status_code  # type: ignore[arg-type]

        assert callback(NEW_TOKEN, "leak-new", auth=auth) == 200
        assert callback(OLD_TOKEN, "leak-old", auth=auth) == 200
        assert requests.get(f"{base}/exotel/callback/{NEW_TOKEN}", auth=auth, timeout=5,
                            params={"CallSid": "leak-get", "CallStatus": "ringing"}).ok
        assert callback(NEW_TOKEN, "leak-nobasic") == 401
        assert callback(NEW_TOKEN, "leak-wrongbasic", auth=(BASIC_USER, "nope")) == 401
        assert callback("not-the-token-at-all-0000", "leak-wrong", auth=auth) == 403
        garbage = requests.post(f"{base}/exotel/callback/{NEW_TOKEN}", auth=auth, timeout=5,
                                data=b'{"CallSid": "x", "n": NaN}',
                                headers={"Content-Type": "application/json"})
        assert garbage.status_code == 400
        assert requests.get(f"{base}/readyz", timeout=5).ok

        jsonl = tmp_path / "calls.jsonl"
        wait_for(lambda: {"leak-new", "leak-old"} <= {r["call_sid"] for r in read_jsonl(jsonl)},
                 timeout=30)
        wait_for(lambda: redis_client.zcard("exolegs:dead") >= 2, timeout=30)
        wait_for(lambda: sentry.requests, timeout=15)  # the dead letters became Sentry events

        outputs = {
            "check": run_cli(secret_env, tmp_path, "check"),
            "sinks list": run_cli(secret_env, tmp_path, "sinks", "list"),
            "dead list": run_cli(secret_env, tmp_path, "dead", "list"),
            "dead list --json": run_cli(secret_env, tmp_path, "dead", "list", "--json"),
            "dead show": run_cli(secret_env, tmp_path, "dead", "show", "leak-new"),
            "fetch": run_cli(secret_env, tmp_path, "fetch", "leak-new"),
        }
    finally:
        web.stop()
        worker.stop()
    outputs["web log"] = web.output()
    outputs["worker log"] = worker.output()
    # X-Sentry-Auth carries the DSN key to Sentry itself, which is what it is for
    outputs["sentry envelopes"] = sentry.text(headers=False)
    outputs["webhook requests"] = webhook.text()  # headers too: no trace baggage

    # the search would prove nothing if nothing had been printed
    assert "/exotel/callback/*** HTTP/1.1\" 200" in outputs["web log"]  # access log at DEBUG
    assert "[DEBUG]" in outputs["web log"]
    assert "dead-lettered" in outputs["worker log"] and " DEBUG " in outputs["worker log"]
    assert "CALLBACK_TOKEN" in outputs["check"] and "2 token(s)" in outputs["check"]
    assert "leak-new" in outputs["dead list"] and "leak-new" in outputs["fetch"]
    assert '"schema": "exolegs.call/v1"' in outputs["fetch"]
    assert "webhook" in outputs["sinks list"]
    assert '"type":"event"' in outputs["sentry envelopes"].replace(" ", "")
    assert "/hooks/exolegs" in outputs["webhook requests"]

    leaks = [
        f"{name} in {where}"
        for name, value in secrets().items()
        for where, text in outputs.items()
        if value in text
    ]
    assert leaks == [], "\n".join(leaks)
