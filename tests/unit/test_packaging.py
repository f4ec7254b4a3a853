"""Dependencies: floors above published advisories, one hashed lock for deployments,
and `make run` installing only what running needs."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
TEST_TOOLS = {"pytest", "mypy", "ruff", "hypothesis", "schemathesis", "responses", "jsonschema"}


def production() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in [*PROJECT["dependencies"], *EXTRAS["sql"]]]
    return {canonicalize_name(r.name): r for r in reqs}


def lock() -> dict[str, tuple[str, list[str]]]:
    """name -> (pinned version, hashes), from requirements.lock."""
    text = re.sub(r"\\\n", " ", (ROOT / "requirements.lock").read_text())
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *hashes = re.split(r"\s+--hash=", line)
        req = Requirement(spec)
        (pin,) = req.specifier
        assert pin.operator == "==", f"{spec!r} is not pinned with =="
        pins[canonicalize_name(req.name)] = (pin.version, hashes)
    return pins


@pytest.mark.parametrize(
    ("package", "vulnerable", "why"),
    [
        ("requests", "2.32.3", "CVE-2024-47081: .netrc credentials sent to another host"),
        ("sentry-sdk", "2.7.1", "CVE-2024-40647: environment passed to every subprocess"),
        ("cryptography", "42.0.3", "CVE-2024-26130: NULL dereference on PKCS#12"),
        ("gunicorn", "22.0.0", "CVE-2024-6827: request smuggling through Transfer-Encoding"),
    ],
)
def test_floors_exclude_versions_with_advisories(package: str, vulnerable: str, why: str) -> None:
    req = production()[package]
    assert vulnerable not in req.specifier, f"{package} {req.specifier} admits {vulnerable} ({why})"
    assert lock()[package][0] in req.specifier


def test_lock_pins_every_production_dependency_with_hashes() -> None:
    pins = lock()
    for name, req in production().items():
        assert name in pins, f"requirements.lock lacks {name}: run `make lock`"
        version, _ = pins[name]
        assert version in req.specifier, f"lock has {name}=={version}, pyproject wants {req}"
    for name, (_version, hashes) in pins.items():
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name


def test_nothing_for_tests_or_the_embedded_redis_in_production() -> None:
    shipped = set(lock()) | set(production())
    assert not (shipped & (TEST_TOOLS | {"fakeredis", "lupa"}))


def test_embedded_redis_is_an_extra_that_dev_includes() -> None:
    (embedded,) = (Requirement(r) for r in EXTRAS["embedded"])
    assert embedded.name == "fakeredis" and "lua" in embedded.extras
    dev = [Requirement(r) for r in EXTRAS["dev"]]
    (self_ref,) = [r for r in dev if r.name == PROJECT["name"]]
    assert {"embedded", "sql"} <= self_ref.extras
    assert TEST_TOOLS <= {canonicalize_name(r.name) for r in dev}


def test_heroku_installs_the_lock_then_the_package() -> None:
    lines = [
        ln.strip()
        for ln in (ROOT / "requirements.txt").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines == ["-r requirements.lock"]
    hook = ROOT / "bin" / "post_compile"
    assert os.access(hook, os.X_OK)
    assert "pip install --quiet --no-deps ." in hook.read_text()


def test_docker_installs_the_lock_with_hashes_then_the_package() -> None:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    runs = [ln for ln in text.splitlines() if ln.startswith("RUN") and "pip install" in ln]
    assert "--require-hashes" in runs[0] and "requirements.lock" in runs[0]
    assert all("--no-deps" in r for r in runs)


def makefile_recipe(target: str) -> str:
    text = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, re.MULTILINE)
    assert match, f"no {target} rule"
    return match.group(1)


def test_make_run_installs_only_what_running_needs() -> None:
    text = (ROOT / "Makefile").read_text()
    assert re.search(r"^run: \$\(RUN_STAMP\)$", text, re.MULTILINE)
    assert re.search(r"^test: \$\(TEST_STAMP\)$", text, re.MULTILINE)
    run = makefile_recipe("$(RUN_STAMP)")
    assert "'.[embedded]'" in run and "dev" not in run
    assert "'.[dev]'" in makefile_recipe("$(TEST_STAMP)")
