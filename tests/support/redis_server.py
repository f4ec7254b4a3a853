"""Start a private Redis for tests: ``redis-server`` from PATH, else fakeredis's TCP server.

Tests only ever flush a server they started themselves.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    port: int
    kind: str
    proc: subprocess.Popen[bytes] | None = None
    embedded: Any = None
    dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="exolegs-redis-"))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary:
            self.kind = "redis-server"
            self.proc = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "yes", "--appendfsync", "always", "--dir", self.dir,
                 "--maxmemory-policy", "noeviction"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        else:
            from fakeredis import TcpFakeServer

            self.kind = "fakeredis"
            server = TcpFakeServer(("127.0.0.1", self.port), server_type="redis")
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self.embedded = server
        self.wait()
        return self

    def wait(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"test Redis on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
        if self.embedded is not None:
            self.embedded.shutdown()
            self.embedded.server_close()
            self.embedded = None

    def restart(self) -> None:
        self.stop()
        self.start()


def start_redis() -> RedisServer:
    return RedisServer(port=free_port(), kind="").start()
