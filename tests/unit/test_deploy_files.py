"""The deployment files run commands that exist, with the settings the docs promise.

No Docker engine is needed: the Procfile, the Dockerfile and docker-compose.yml
are parsed, and every command in them is parsed by the real ``exolegs``
argument parser.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import signal
import tomllib
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from worker.calls.simulator import SimulatorConfig
from worker.cli import parser
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}")
HEROKU_SHUTDOWN_SECONDS = 30


# ------------------------------------------------------------------ helpers
def console_scripts() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    scripts: dict[str, str] = project["scripts"]
    return scripts


def split_command(command: str | list[Any]) -> tuple[dict[str, str], list[str]]:
    """Leading ``NAME=value`` assignments, then the argv (shell words)."""
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    env: dict[str, str] = {}
    while argv and (match := ASSIGNMENT.match(argv[0])):
        env[match.group(1)] = match.group(2)
        argv.pop(0)
    return env, argv


def assert_runs(command: str | list[Any]) -> list[str]:
    """The command's program exists and ``exolegs`` accepts its arguments."""
    env, argv = split_command(command)
    assert argv, f"{command!r} runs nothing"
    program = argv[0]
    scripts = console_scripts()
    in_venv = (VENV_BIN / program).is_file() and os.access(VENV_BIN / program, os.X_OK)
    assert program in scripts or in_venv, (
        f"{program!r} is neither a [project.scripts] entry nor an executable in .venv/bin"
    )
    if program in scripts:
        module, _, attr = scripts[program].partition(":")
        assert callable(getattr(importlib.import_module(module), attr))
    if program == "exolegs":
        try:
            args = parser().parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"exolegs rejects the arguments of {command!r}")
        assert callable(args.func)
    if "REMAP_SIGTERM" in env:
        assert isinstance(getattr(signal, env["REMAP_SIGTERM"], None), signal.Signals)
    return argv


def seconds(duration: str | int | float) -> float:
    """A compose duration (``30s``, ``1m30s``, ``500ms``) in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def procfile() -> dict[str, str]:
    types: dict[str, str] = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if not line.strip():
            continue
        name, sep, command = line.partition(":")
        assert sep and re.fullmatch(r"[A-Za-z0-9_-]+", name), f"bad Procfile line {line!r}"
        assert name not in types, f"process type {name} twice"
        types[name] = command.strip()
    return types


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def service(name: str) -> dict[str, Any]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    assert name in services, f"docker-compose.yml has no {name} service"
    return services[name]


def environment(svc: dict[str, Any], variables: dict[str, str] | None = None) -> dict[str, str]:
    """The service's ``environment``; with ``variables``, ``${X:-default}`` interpolated."""
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    out = {str(k): "" if v is None else str(v) for k, v in env.items()}
    if variables is not None:
        for key, value in out.items():
            out[key] = INTERPOLATION.sub(lambda m: variables.get(m[1]) or m[2], value)
            assert "$" not in out[key], f"{key}: only ${{NAME:-default}} is understood here"
    return out


def env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def celery_conf() -> dict[str, Any]:
    """What ``worker.celery_app.configure`` would apply, without touching the app."""
    from worker import celery_app

    with mock.patch.object(celery_app, "app") as app:
        celery_app.configure(Settings.from_env({}, dotenv=False))
    conf: dict[str, Any] = app.conf.update.call_args.args[0]
    return conf


# ------------------------------------------------------------------ Procfile
def test_procfile_has_exactly_web_and_worker() -> None:
    assert set(procfile()) == {"web", "worker"}


@pytest.mark.parametrize("process", ["web", "worker"])
def test_procfile_commands_exist(process: str) -> None:
    argv = assert_runs(procfile()[process])
    assert argv == ["exolegs", process]


def test_worker_shutdown_fits_heroku() -> None:
    """SIGTERM becomes Celery's soft-then-cold shutdown, and it ends before SIGKILL."""
    env, _ = split_command(procfile()["worker"])
    assert env.get("REMAP_SIGTERM") == "SIGQUIT"
    conf = celery_conf()
    assert 0 < conf["worker_soft_shutdown_timeout"] < HEROKU_SHUTDOWN_SECONDS - 5
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]


def test_web_binds_port_with_web_concurrency() -> None:
    from web.server import gunicorn_options

    options = gunicorn_options(Settings.from_env({"PORT": "5123", "WEB_CONCURRENCY": "3"}))
    assert options["bind"] == "0.0.0.0:5123"
    assert options["workers"] == 3
    assert options["graceful_timeout"] < HEROKU_SHUTDOWN_SECONDS


# ---------------------------------------------------------------- Dockerfile
def dockerfile() -> list[str]:
    """Instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def instruction(name: str) -> list[str]:
    return [ln.split(None, 1)[1] for ln in dockerfile() if ln.split(None, 1)[0].upper() == name]


def test_dockerfile_cmd_is_a_real_command() -> None:
    cmd = instruction("CMD")
    assert len(cmd) == 1
    argv = json.loads(cmd[0])  # exec form, so signals reach exolegs itself
    assert argv == ["exolegs", "web"]
    assert_runs(argv)


def test_dockerfile_base_user_and_install() -> None:
    assert instruction("FROM") == ["python:3.11-slim"]
    users = instruction("USER")
    assert users and users[-1] not in ("root", "0")
    installs = [r for r in instruction("RUN") if "pip install" in r]
    assert installs and not any("dev" in r for r in installs)


def test_dockerignore_keeps_secrets_out_and_sources_in() -> None:
    ignored = {
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    assert {".env", ".venv", ".git", "var"} <= ignored
    for needed in ("pyproject.toml", "README.md", "web", "worker"):
        assert (ROOT / needed).exists()
        assert needed not in ignored


# ------------------------------------------------------------ docker compose
def test_compose_has_the_services() -> None:
    assert {"redis", "web", "worker", "simulator"} <= set(compose()["services"])


def test_only_the_simulator_is_behind_a_profile() -> None:
    for name, svc in compose()["services"].items():
        if name == "simulator":
            assert svc.get("profiles") == ["simulator"]
        else:
            assert not svc.get("profiles"), f"{name} must always run"


def test_redis_is_durable_and_never_evicts() -> None:
    redis = service("redis")
    assert str(redis["image"]).startswith("redis:7")
    argv = split_command(redis["command"])[1]
    assert argv[0] == "redis-server"
    flags = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert flags["--appendonly"] == "yes"
    assert flags["--appendfsync"] == "everysec"
    assert flags["--maxmemory-policy"] == "noeviction"
    assert any(str(v).endswith(":/data") for v in redis["volumes"])
    assert redis["healthcheck"]["test"]


@pytest.mark.parametrize(
    ("name", "argv"),
    [
        ("web", ["exolegs", "web"]),
        ("worker", ["exolegs", "worker"]),
        ("simulator", ["exolegs", "simulate", "--host", "0.0.0.0", "--port", "8099"]),
    ],
)
def test_compose_commands_exist(name: str, argv: list[str]) -> None:
    assert assert_runs(service(name)["command"]) == argv


def test_web_publishes_its_port_and_is_checked() -> None:
    web = service("web")
    port = environment(web)["PORT"]
    assert f"{port}:{port}" in [str(p) for p in web["ports"]]
    assert web["depends_on"]["redis"]["condition"] == "service_healthy"
    assert f"127.0.0.1:{port}/healthz" in " ".join(web["healthcheck"]["test"])
    assert seconds(web["stop_grace_period"]) >= 20  # gunicorn's graceful_timeout


def test_app_services_share_redis_and_the_spool_volume() -> None:
    for name in ("web", "worker"):
        svc = service(name)
        env = environment(svc, {})
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["REDIS_TLS_URL"] == ""  # else one left in .env would win
        assert Settings.from_env(env, dotenv=False).redis_url == "redis://redis:6379/0"
        assert ".env" in [str(f) for f in svc["env_file"]]
        mounts = dict(str(v).split(":", 1) for v in svc["volumes"])
        assert env["SPOOL_DIR"].startswith(mounts["exolegs-var"] + "/")
        assert "exolegs-var" in compose()["volumes"]
        assert "container_name" not in svc  # web is one; worker must scale


def test_worker_stops_like_on_heroku() -> None:
    worker = service("worker")
    assert seconds(worker["stop_grace_period"]) >= HEROKU_SHUTDOWN_SECONDS
    assert environment(worker)["REMAP_SIGTERM"] == "SIGQUIT"
    assert "ports" not in worker


def test_simulator_env_file_points_at_the_simulator() -> None:
    values = env_file(ROOT / "simulator.env")
    config = SimulatorConfig()
    assert values["COMPOSE_PROFILES"] == "simulator"
    assert values["EXOTEL_BASE_URL"] == "http://simulator:8099"
    assert values["EXOTEL_ACCOUNT_SID"] == config.account_sid
    assert values["EXOTEL_API_KEY"] == config.api_key
    assert values["EXOTEL_API_TOKEN"] == config.api_token
    for name in ("web", "worker"):
        # with the file: the simulator's address and credentials win over .env
        settings = Settings.from_env(environment(service(name), values), dotenv=False)
        assert settings.exotel_configured and settings.exotel_url == "http://simulator:8099"
        assert settings.exotel_account_sid == config.account_sid
        # without it they come from .env or the shell, like env_file; unset is empty
        plain = environment(service(name), {})
        assert all(not plain[k] for k in values if k.startswith("EXOTEL_"))


# ----------------------------------------------------------------------- CI
def test_ci_runs_make_test_as_the_readme_says() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.startswith("#")]
    assert commands[-1] == "make test"
    assert os.access(ROOT / ".ci" / "run", os.X_OK)
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^\s*make test\b", readme, re.MULTILINE)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test:", makefile, re.MULTILINE)
    assert re.search(r"^run:.*\n\t\$\(BIN\)/exolegs dev$", makefile, re.MULTILINE)
