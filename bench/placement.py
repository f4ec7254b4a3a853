"""Where keep-alive connections land: how many each gunicorn worker process holds.

    .venv/bin/python bench/placement.py [--rounds 10] [--connections 16] [--workers 2]

Starts a private redis-server and the bench's edge (``exolegs web``), once
with gunicorn's stock ``gthread`` worker and once with ``web/gthread.py``'s,
and each round opens ``--connections`` keep-alive connections at once, as the
load generator does, sends one request on each and counts, from
``/proc/net/tcp`` and each worker's file descriptors, how many each worker
process accepted. A process holds its connections until they close, and
(the GIL) uses one core, so a 16/0 split halves what two processes can do.
"""

# Run as a script, sys.path[0] would be bench/; put the repository root there instead.
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import os
import secrets
import shlex
import socket
import time
from functools import partial

from bench.common import Child, PrivateRedis, free_port, wait_until, workdir
from bench.ingest import Server, healthy


def established_inodes(port: int) -> set[str]:
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
            inodes.add(fields[9])
    return inodes


def per_worker(master: int, port: int) -> list[int]:
    """Connections each child of ``master`` holds, most first."""
    inodes = established_inodes(port)
    counts = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != master:
                continue
            links = [os.readlink(fd) for fd in (stat.parent / "fd").iterdir()]
        except OSError:
            continue
        counts.append(sum(1 for link in links if link[8:-1] in inodes))
    return sorted(counts, reverse=True)


def rounds(work: Path, redis: PrivateRedis, args: argparse.Namespace, stock: bool) -> int:
    """Run the rounds against one server; the largest imbalance seen."""
    port = free_port()
    env = {
        "REDIS_URL": redis.url,
        "CALLBACK_TOKEN": secrets.token_urlsafe(24),
        "WEB_CONCURRENCY": str(args.workers),
        "SPOOL_DIR": str(work / "spool"),
    }
    command = [sys.executable, "-m", "bench.serve", "edge", "--bind", f"127.0.0.1:{port}"]
    name = "stock gthread" if stock else "web/gthread.py"
    child = Child(name, [*command, *(["--stock-gthread"] if stock else [])], env, work / "w.log")
    try:
        wait_until(partial(healthy, Server(name, port, child)), f"{name} /healthz", child=child)
        time.sleep(1)
        worst = 0
        for n in range(args.rounds):
            socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(args.connections)]
            for sock in socks:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            for sock in socks:
                sock.recv(65536)
            split = per_worker(child.proc.pid, port)
            worst = max(worst, split[0] - split[-1])
            shown = "/".join(map(str, split))
            print(f"  {name:15} round {n + 1:2}: connections per worker {shown}")
            for sock in socks:
                sock.close()
            time.sleep(0.3)
        return worst
    finally:
        child.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    print(f"$ {shlex.join([Path(sys.executable).name, *sys.argv])}")
    with workdir("exolegs-bench-placement-", False) as work:
        redis = PrivateRedis(work)
        try:
            stock = rounds(work, redis, args, stock=True)
            ours = rounds(work, redis, args, stock=False)
        finally:
            redis.stop()
    print(f"largest imbalance in {args.rounds} rounds of {args.connections} connections: "
          f"stock gthread {stock}, web/gthread.py {ours}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
