"""The environment variables ``Settings.from_env`` reads, found in its source."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Every read goes through a helper taking (env, "NAME", ...) or env.get("NAME").
_READ = re.compile(r'\benv(?:\s*,\s*|\.get\(\s*|\[\s*)"([A-Z][A-Z0-9_]*)"')


def settings_variables() -> set[str]:
    return set(_READ.findall((ROOT / "worker" / "settings.py").read_text()))
