"""A newcomer's first run: fresh clone, ``make run``, seconds until the first served request.

Each round clones the committed ``--ref`` into a temporary directory once per variant and
times, from ``make`` starting to the first ``200`` from ``GET /healthz``, split
into the install step that ``make run`` performs first and the start itself:

- ``make run``: installs what running needs (the package and its embedded
  Redis) with uv;
- ``make run UV=``: the same with pip alone;
- ``make venv run``: installs the test and lint tools too first (the baseline);
- ``make venv run UV=``: the same with pip alone, which is what ``make run``
  did before it split the installs.

Each starts from nothing: a new clone, no ``.venv``, empty pip and uv caches of
its own (in the temporary directory), no ``REDIS_URL``,
``CALLBACK_TOKEN``, ``SINKS`` or Exotel credentials from this shell. They
alternate, and the ratio is printed per round.

    .venv/bin/python bench/first_run.py              # 1 round, ~3 minutes here
    .venv/bin/python bench/first_run.py --rounds 2

The absolute times depend on the package index (this machine's is a local
mirror; a laptop downloads): read the ratio.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.error import URLError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, free_port

# Settings a developer's shell may carry that would change what a newcomer sees.
SCRUB = (
    "REDIS_URL",
    "REDIS_TLS_URL",
    "CALLBACK_TOKEN",
    "SINKS",
    "PORT",
    "SPOOL_DIR",
    "EXOTEL_ACCOUNT_SID",
    "EXOTEL_API_KEY",
    "EXOTEL_API_TOKEN",
    "EXOTEL_BASE_URL",
    "VIRTUAL_ENV",
    "PYTHONPATH",
)
#: name -> (the install step ``make run`` performs first, the extra make arguments)
VARIANTS = {
    "make run": ("venv-run", []),
    "make run UV= (pip alone)": ("venv-run", ["UV="]),
    "make venv run (test tools too)": ("venv", []),
    "make venv run UV= (pip + test tools)": ("venv", ["UV="]),
}


def served(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
            return bool(resp.status == 200)
    except (URLError, OSError):
        return False


def first_run(
    ref: str, install: str, extra: list[str], tmp: Path, *, timeout: float
) -> tuple[float, float]:
    """(seconds installing, seconds from ``make run`` to the first 200) for one fresh clone."""
    clone = tmp / "clone"
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", ref], check=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    env.update(PORT=str(port), PIP_CACHE_DIR=str(tmp / "pip-cache"), UV_CACHE_DIR=str(tmp / "uv"))
    log_path = tmp / "make.log"
    with log_path.open("wb") as log:
        start = time.monotonic()
        done = subprocess.run(
            ["make", install, *extra],
            cwd=clone,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )
        installed = time.monotonic() - start
        if done.returncode:
            raise SystemExit(f"make {install} failed:\n{log_path.read_text()[-3000:]}")
        start = time.monotonic()
        proc = subprocess.Popen(
            ["make", "run", *extra],
            cwd=clone,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            while not served(port):
                if proc.poll() is not None:
                    raise SystemExit(
                        f"make run exited {proc.returncode}:\n" + log_path.read_text()[-3000:]
                    )
                if time.monotonic() - start > timeout:
                    raise SystemExit(f"make run: nothing served after {timeout:.0f}s")
                time.sleep(0.1)
            return installed, time.monotonic() - start
        finally:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: exolegs dev stops its children
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default="HEAD", help="commit to clone (default HEAD; commit first)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per run")
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated names of the variants to run (default: all)",
    )
    args = ap.parse_args()
    ref = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", args.ref],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    py = subprocess.run(["python3", "--version"], capture_output=True, text=True).stdout.strip()
    print(f"first run from a fresh clone of {ref} ({py}, {os.cpu_count()} cores)")
    print(f"{'round':>5}  {'variant':34} {'install':>8} {'start':>8} {'total':>8}")
    for rnd in range(1, args.rounds + 1):
        times: dict[str, float] = {}
        chosen = [v.strip() for v in args.variants.split(",")]
        for name, (install, extra) in VARIANTS.items():
            if name not in chosen:
                continue
            with tempfile.TemporaryDirectory(prefix="exolegs-first-run-") as tmp:
                inst, up = first_run(ref, install, extra, Path(tmp), timeout=args.timeout)
            times[name] = inst + up
            print(f"{rnd:>5}  {name:34} {inst:8.1f} {up:8.1f} {inst + up:8.1f}", flush=True)
        ours = times.get("make run")
        for other in (
            "make venv run (test tools too)",
            "make run UV= (pip alone)",
            "make venv run UV= (pip + test tools)",
        ):
            if ours and other in times:
                label = f"ratio make run / {other}"
                print(f"{rnd:>5}  {label[:60]:60} {ours / times[other]:8.2f}", flush=True)


if __name__ == "__main__":
    main()
