"""Slow clients cannot silence the edge: `exolegs web`, as the Procfile runs it, keeps answering.

Each test opens many sockets that send part of a request and then nothing
(the slowloris pattern), then times a normal callback and /healthz on fresh
connections. Without web/gthread.py, 4 such sockets per gunicorn process
were enough to make /healthz time out.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import CALLBACK_TOKEN
from tests.support.processes import ROOT, wait_for
from tests.support.redis_server import free_port
from web.gthread import READ_TIMEOUT_SECONDS

SOCKETS = 64
HALF_HEADERS = b"GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Agent: slow"
URL = f"/exotel/callback/{CALLBACK_TOKEN}"


def procfile_web() -> str:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if ": " in line)["web"]


@pytest.fixture(params=["1", "2"], ids=["WEB_CONCURRENCY=1", "WEB_CONCURRENCY=2"])
def web(request: pytest.FixtureRequest, env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """`exolegs web` started with the Procfile's command line; yields its base URL."""
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    full = {
        **os.environ, **env, "PORT": str(port), "WEB_CONCURRENCY": request.param,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
    }
    log = (tmp_path / "web.log").open("wb")
    proc = subprocess.Popen(["bash", "-c", procfile_web()], env=full, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, (tmp_path / "web.log").read_text()
        try:
            return requests.get(f"{base}/healthz", timeout=1).ok
        except requests.RequestException:
            return False

    try:
        wait_for(up, timeout=30)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def stall(base: str, payloads: list[bytes]) -> list[socket.socket]:
    """Open one socket per payload, send it, and leave the socket open."""
    port = int(base.rsplit(":", 1)[1])
    socks = []
    for payload in payloads:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(payload)
        socks.append(sock)
    time.sleep(0.3)  # let every process accept and start waiting on them
    return socks


def timed(call: Callable[[], requests.Response]) -> tuple[float, int]:
    started = time.monotonic()
    answer = call()
    return time.monotonic() - started, answer.status_code


def assert_still_answering(base: str, sid: str) -> None:
    for n in range(3):  # fresh connections each time: they must be accepted and served
        took, status = timed(lambda: requests.get(f"{base}/healthz", timeout=1))
        assert status == 200 and took < 1.0, (took, status)
        took, status = timed(lambda n=n: requests.post(  # type: ignore[misc]
            base + URL, data={"CallSid": f"{sid}{n}", "Status": "completed"}, timeout=1))
        assert status == 200 and took < 1.0, (took, status)


def test_64_connections_with_half_their_headers(web: str) -> None:
    opened = time.monotonic()
    socks = stall(web, [HALF_HEADERS] * SOCKETS)
    try:
        assert_still_answering(web, "slowheaders")
        # and they do not stay for ever: 408 and closed after READ_TIMEOUT_SECONDS
        socks[0].settimeout(READ_TIMEOUT_SECONDS + 5)
        answer = socks[0].recv(65536)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert READ_TIMEOUT_SECONDS - 1 <= time.monotonic() - opened <= READ_TIMEOUT_SECONDS + 3
    finally:
        for sock in socks:
            sock.close()


def test_64_connections_with_half_their_body(web: str) -> None:
    head = (f"POST {URL} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
            "\r\nContent-Length: 500\r\n\r\nCallSid=slowbody&Status=").encode()
    chunked = (f"POST {URL} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
               "\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nCallSid=slowbody").encode()
    socks = stall(web, [head] * (SOCKETS // 2) + [chunked] * (SOCKETS // 2))
    try:
        assert_still_answering(web, "slowbody")
    finally:
        for sock in socks:
            sock.close()


def test_kept_alive_and_pipelined_connections_that_stall(web: str) -> None:
    """A whole request first, then half of the next one on the same connection."""
    full = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    pipelined = stall(web, [full + HALF_HEADERS] * (SOCKETS // 2))
    kept = stall(web, [full] * (SOCKETS // 2))
    for sock in kept:
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(HALF_HEADERS)
    time.sleep(0.3)
    try:
        assert_still_answering(web, "slowkeepalive")
    finally:
        for sock in pipelined + kept:
            sock.close()


def test_a_stalled_request_still_completes_when_the_client_resumes(web: str) -> None:
    port = int(web.rsplit(":", 1)[1])
    body = b"CallSid=resumed1&Status=completed"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"POST {URL} HTTP/1.1\r\nHost: x\r\n".encode())
        time.sleep(0.5)
        sock.sendall(b"Content-Type: application/x-www-form-urlencoded\r\n"
                     + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                     + body[:10])
        time.sleep(0.5)
        sock.sendall(body[10:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b'"call_sid":"resumed1"' in answer


# ------------------------------------------------------- connection placement
def _established_inodes(port: int) -> set[str]:
    """Inodes of the server side of established TCP connections on ``port`` (IPv4)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == "01":
            inodes.add(fields[9])
    return inodes


def _connections_per_worker(master: int, port: int) -> list[int]:
    inodes = _established_inodes(port)
    counts = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid != master:
                continue
            links = [os.readlink(fd) for fd in (stat.parent / "fd").iterdir()]
        except OSError:
            continue
        counts.append(sum(1 for link in links if link[8:-1] in inodes))
    return sorted(counts, reverse=True)


def test_keep_alive_connections_are_spread_evenly_over_the_workers(
    env: dict[str, str], tmp_path: Path
) -> None:
    """They used to land mostly on one process (often all 16), halving throughput."""
    from tests.support.processes import start_web

    port = free_port()
    web = start_web({**env, "WEB_CONCURRENCY": "2"}, tmp_path / "web.log", port)
    try:
        master = web.proc.pid
        wait_for(lambda: len(_connections_per_worker(master, port)) == 2, timeout=10)
        for _ in range(5):
            socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(16)]
            for sock in socks:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            for sock in socks:
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            split = _connections_per_worker(master, port)
            assert sum(split) == 16 and split[0] - split[-1] <= 2, split
            for sock in socks:
                sock.close()
            time.sleep(0.2)
    finally:
        web.stop()


# ------------------------------------------------- callbacks on the event loop
def test_a_silent_redis_holds_an_inline_callback_a_quarter_second_not_the_edge(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A callback is answered on the worker's event loop (web/gthread.py), where its wait
    for Redis is bounded: a Redis that accepts and never answers gets it spooled at once,
    /healthz stays answered, and callbacks go to the pool's threads for a while."""
    from tests.support.processes import start_web
    from web.gthread import INLINE_SOCKET_SECONDS

    silent = socket.create_server(("127.0.0.1", 0))  # never accepts, reads or answers
    port = free_port()
    spool = tmp_path / "spool"
    log = tmp_path / "web.log"
    web = start_web(
        {**env, "WEB_CONCURRENCY": "1", "SPOOL_DIR": str(spool),
         "REDIS_URL": f"redis://127.0.0.1:{silent.getsockname()[1]}/0"},
        log,
        port,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        took, status = timed(lambda: requests.post(
            base + URL, data={"CallSid": "silentredis1", "Status": "completed"}, timeout=5))
        assert status == 200 and INLINE_SOCKET_SECONDS <= took < 1.0, (took, status)
        assert len(list(spool.glob("*.json"))) == 1
        took, status = timed(lambda: requests.get(f"{base}/healthz", timeout=1))
        assert status == 200 and took < 1.0, (took, status)
        wait_for(lambda: "on the event loop" in log.read_text(), timeout=5)
    finally:
        web.stop()
        silent.close()
