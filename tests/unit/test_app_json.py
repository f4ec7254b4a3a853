"""app.json, the Heroku Button's manifest: only the fields Heroku documents, and every
variable and command in it is one exolegs has.

The schema below transcribes Heroku's app.json reference,
https://devcenter.heroku.com/articles/app-json-schema (name, description,
keywords, website, repository, logo, success_url, scripts, env, formation,
image, addons, buildpacks, environments, stack).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.support.settings_vars import settings_variables
from worker.cli import parser
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
APP = json.loads((ROOT / "app.json").read_text())

HEROKU_APP_JSON: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "description": {"type": "string"},
        "keywords": {"type": "array", "items": {"type": "string"}},
        "website": {"type": "string"},
        "repository": {"type": "string"},
        "logo": {"type": "string"},
        "success_url": {"type": "string"},
        "scripts": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"postdeploy": {"type": "string"}, "pr-predestroy": {"type": "string"}},
        },
        "env": {
            "type": "object",
            "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
            "additionalProperties": {
                "oneOf": [
                    {"type": "string"},
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "description": {"type": "string"},
                            "value": {"type": "string"},
                            "required": {"type": "boolean"},
                            "generator": {"enum": ["secret"]},
                        },
                    },
                ]
            },
        },
        "formation": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["quantity"],
                "properties": {
                    "quantity": {"type": "integer", "minimum": 0},
                    "size": {"type": "string"},
                },
            },
        },
        "image": {"type": "string"},
        "addons": {
            "type": "array",
            "items": {
                "oneOf": [
                    {"type": "string"},
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["plan"],
                        "properties": {
                            "plan": {"type": "string"},
                            "as": {"type": "string"},
                            "options": {"type": "object"},
                        },
                    },
                ]
            },
        },
        "buildpacks": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["url"],
                "properties": {"url": {"type": "string"}},
            },
        },
        "environments": {"type": "object"},
        "stack": {"type": "string"},
    },
}


def test_app_json_uses_only_documented_fields() -> None:
    jsonschema.validate(APP, HEROKU_APP_JSON)


def test_formation_runs_the_procfile_processes() -> None:
    procfile = {
        line.split(":", 1)[0].strip()
        for line in (ROOT / "Procfile").read_text().splitlines()
        if ":" in line and not line.startswith("#")
    }
    assert set(APP["formation"]) == procfile == {"web", "worker"}
    assert all(p["quantity"] >= 1 for p in APP["formation"].values())


def test_redis_addon_provides_redis_url() -> None:
    plans = [a if isinstance(a, str) else a["plan"] for a in APP["addons"]]
    assert [p.split(":")[0] for p in plans] == ["heroku-redis"]
    (addon,) = APP["addons"]
    assert isinstance(addon, str) or addon.get("as", "REDIS") == "REDIS"  # REDIS_URL


def test_every_variable_is_a_setting_with_a_description() -> None:
    read = settings_variables()
    for name, spec in APP["env"].items():
        assert name in read, f"app.json sets {name}, which Settings never reads"
        assert isinstance(spec, dict) and spec.get("description"), name


def test_callback_token_is_a_generated_secret_that_settings_accepts() -> None:
    token = APP["env"]["CALLBACK_TOKEN"]
    assert token.get("generator") == "secret" and "value" not in token
    # Heroku's secret generator gives 64 hexadecimal characters.
    settings = Settings.from_env({"CALLBACK_TOKEN": "0123456789abcdef" * 4}, dotenv=False)
    assert settings.callback_tokens == ("0123456789abcdef" * 4,)


def test_secrets_have_no_value_and_the_given_values_are_valid() -> None:
    for name in ("EXOTEL_API_TOKEN", "SENTRY_DSN", "SINKS"):
        assert "value" not in APP["env"][name], name
    values = {k: v["value"] for k, v in APP["env"].items() if "value" in v}
    Settings.from_env(values, dotenv=False)  # raises on a bad default


@pytest.mark.parametrize("script", sorted(APP["scripts"]))
def test_every_command_it_names_exists(script: str) -> None:
    argv = shlex.split(APP["scripts"][script])
    assert argv[0] == "exolegs"
    args = parser().parse_args(argv[1:])
    assert callable(args.func)
    assert APP["scripts"]["postdeploy"] == "exolegs check"


def test_deployment_docs_show_the_button_and_the_one_command_after() -> None:
    text = (ROOT / "docs" / "deployment.md").read_text()
    assert re.search(r"\]\(https://www\.herokucdn\.com/deploy/button\.svg\)", text)
    assert "heroku redis:maxmemory" in text and "--policy noeviction" in text
