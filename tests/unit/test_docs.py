"""The docs stay true: variables, commands, SINKS examples and quoted log lines are
checked against the code, so a change to one without the other fails here."""

from __future__ import annotations

import argparse
import ast
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.settings_vars import settings_variables
from worker.cli import parser
from worker.errors import SettingsError
from worker.settings import Settings
from worker.sinks.base import SinkContext
from worker.sinks.registry import build_sinks

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]

#: Variables the docs list that something other than Settings reads, and who.
READ_ELSEWHERE = {
    "REMAP_SIGTERM": "Celery (the Procfile's worker line)",
    "COMPOSE_PROFILES": "docker compose (simulator.env)",
}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ------------------------------------------------------------ configuration
def documented_variables() -> dict[str, str]:
    """``| `NAME` | ... |`` rows of configuration.md's tables: name -> its default cell."""
    found: dict[str, str] = {}
    columns: list[str] = []
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        if not line.startswith("|"):
            columns = []
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not columns:
            columns = [c.lower() for c in cells]
            continue
        if set("".join(cells)) <= set("-: "):
            continue
        if columns[0] != "variable" or "default" not in columns:
            continue
        for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0]):
            found[name] = cells[columns.index("default")]
    return found


def test_every_setting_is_documented_with_its_default() -> None:
    documented = documented_variables()
    missing = sorted(settings_variables() - set(documented))
    assert not missing, f"docs/configuration.md has no table row for {missing}"
    blank = sorted(n for n in settings_variables() if not documented[n])
    assert not blank, f"docs/configuration.md gives no default for {blank}"


def test_every_documented_variable_is_read() -> None:
    unread = sorted(set(documented_variables()) - settings_variables() - set(READ_ELSEWHERE))
    assert not unread, f"docs/configuration.md documents {unread}, which nothing reads"


# ----------------------------------------------------------------- commands
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
# How a code block runs exolegs: after a prompt and NAME=value assignments, maybe
# through the venv, heroku run, docker compose or a systemd ExecStart line.
RUNS = re.compile(
    r"^(?:\$ )?(?:[A-Z_]+=\S* )*(?:ExecStart=\S*/|\.venv/bin/|heroku run (?:-a \S+ )?"
    r"|docker compose (?:run|exec) (?:--rm )?\S+ )?(exolegs(?: .*)?)$"
)


def block_commands() -> Iterator[tuple[str, str]]:
    """(page, command) for each line of a code block that runs exolegs."""
    for page in PAGES:
        for block in FENCE.finditer(page.read_text()):
            for line in block.group(1).replace("\\\n", " ").splitlines():
                line = re.sub(r"\s+#.*$", "", line.strip())  # a trailing comment
                match = RUNS.match(line)
                if match and not re.match(r"exolegs(?: [a-z]+)?[:.]", match.group(1)):
                    yield rel(page), match.group(1).removesuffix(" &")


def span_commands() -> Iterator[tuple[str, str]]:
    """(page, synopsis) for each `exolegs ...` code span in the prose."""
    for page in PAGES:
        prose = FENCE.sub("", page.read_text())
        for span in re.findall(r"`(?:\.venv/bin/|heroku run )?(exolegs [a-z][^`\n]*)`", prose):
            yield rel(page), span


def as_argv(command: str) -> list[str]:
    """Shell words, with documentation placeholders (``<call_sid>``, ``CA…``) filled in."""
    command = re.sub(r"<[^>]+>", "CAexample", command).replace("…", "example")
    return shlex.split(command)[1:]


BLOCKS = sorted(set(block_commands()))
SPANS = sorted(set(span_commands()))


def test_the_docs_show_commands() -> None:
    assert len(BLOCKS) > 10 and len(SPANS) > 10


@pytest.mark.parametrize(("page", "command"), BLOCKS)
def test_every_command_in_a_code_block_parses(page: str, command: str) -> None:
    try:
        args = parser().parse_args(as_argv(command))
    except SystemExit:
        pytest.fail(f"{page}: `{command}` is not a valid exolegs command")
    assert callable(args.func)


def _subcommands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@pytest.mark.parametrize(("page", "synopsis"), SPANS)
def test_every_command_named_in_the_prose_exists_with_its_options(page: str, synopsis: str) -> None:
    """`exolegs dead list|show [--json]`: each command named exists, each option it shows too."""
    words = synopsis.split()[1:]
    commands = [parser()]
    while words and words[0] not in ("…", "...") and (choices := _subcommands(commands[0])):
        names = re.split(r"[|/]", words.pop(0))
        unknown = [n for n in names if n not in choices]
        assert not unknown, f"{page}: `{synopsis}`: no command {unknown}"
        commands = [choices[n] for n in names]
    for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", " ".join(words)):
        for command in commands:
            known = {o for a in command._actions for o in a.option_strings}
            assert option in known, f"{page}: `{synopsis}`: {command.prog} has no {option}"


# -------------------------------------------------------------------- SINKS
def sinks_examples() -> Iterator[tuple[str, str]]:
    """(page, value) for each ``SINKS=...`` shown, as written."""
    for page in PAGES:
        for match in re.finditer(
            r"\bSINKS=('[^']*'|\"[^\"]*\"|[^\s`]+(?:[ ,][a-z+]+://\S+)*)", page.read_text()
        ):
            value = match.group(1)
            if value[0] in "'\"":
                value = value[1:-1]
            if "${" not in value:
                yield rel(page), value


SINKS_EXAMPLES = sorted(set(sinks_examples()))


def test_the_docs_show_sinks_examples() -> None:
    assert len(SINKS_EXAMPLES) >= 3


@pytest.mark.parametrize(("page", "value"), SINKS_EXAMPLES)
def test_every_sinks_example_parses_as_written(page: str, value: str) -> None:
    assert "..." not in value and "…" not in value, f"{page}: {value!r} has a placeholder"
    try:
        settings = Settings.from_env({"SINKS": value}, dotenv=False)
        build_sinks(settings.sinks, SinkContext(settings))
    except SettingsError as err:
        pytest.fail(f"{page}: SINKS={value!r} does not parse: {err}")


# ---------------------------------------------------------------- log lines
LOG_CALL = {"debug", "info", "warning", "error", "exception", "critical", "log"}
# ``12:00:01 INFO exolegs.tasks message`` (the console format), the time optional.
LOG_LINE = re.compile(r"^(?:\d\d:\d\d:\d\d )?(DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+) (.*)$")


def _pattern(node: ast.expr) -> str | None:
    """A regex for the message a logging call's format argument produces."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        parts = re.split(r"(%(?:\([a-z_]+\))?[-#0 +]*\d*(?:\.\d+)?[sdrfgiexX%])", node.value)
        return "".join(
            ("%" if p == "%%" else r".+?") if i % 2 else re.escape(p) for i, p in enumerate(parts)
        )
    if isinstance(node, ast.JoinedStr):
        return "".join(
            re.escape(v.value) if isinstance(v, ast.Constant) else r".+?" for v in node.values
        )
    return None


def code_log_formats() -> list[re.Pattern[str]]:
    patterns = []
    for path in [*ROOT.glob("worker/**/*.py"), *ROOT.glob("web/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_CALL
                and node.args
            ):
                arg = (
                    node.args[1] if node.func.attr == "log" and len(node.args) > 1 else node.args[0]
                )
                pattern = _pattern(arg)
                if pattern:
                    patterns.append(re.compile(pattern, re.DOTALL))
    return patterns


def quoted_log_lines() -> Iterator[str]:
    text = (ROOT / "docs" / "operations.md").read_text()
    for block in FENCE.finditer(text):
        for line in block.group(1).splitlines():
            match = LOG_LINE.match(line.strip())
            if match and match.group(2).startswith(("exolegs", "web")):
                yield line.strip()


LOG_LINES = sorted(set(quoted_log_lines()))


def test_operations_quotes_log_lines() -> None:
    assert len(LOG_LINES) >= 10


@pytest.mark.parametrize("line", LOG_LINES)
def test_every_quoted_log_line_matches_a_format_in_the_code(line: str) -> None:
    # "…" stands for a value left out; a value in the code's format matches it.
    message = LOG_LINE.match(line).group(3)  # type: ignore[union-attr]
    assert any(p.fullmatch(message) for p in code_log_formats()), (
        f"docs/operations.md quotes a log line no code prints: {line}"
    )


# ---------------------------------------------------------------- changelog
def test_changelog_keeps_a_changelog_at_the_project_version() -> None:
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    text = (ROOT / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d\d-\d\d))?$", text, re.MULTILINE)
    assert releases[0] == ("Unreleased", "")
    assert releases[1][0] == version and releases[1][1], "the newest release is pyproject's"
    for section in re.findall(r"^### (.+)$", text, re.MULTILINE):
        assert section in {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def test_nothing_points_outside_the_repository() -> None:
    files = [
        *PAGES,
        ROOT / "CHANGELOG.md",
        *ROOT.glob("worker/**/*.py"),
        *ROOT.glob("web/**/*.py"),
        *ROOT.glob("bench/*.py"),
        *ROOT.glob("tests/**/*.py"),
        *ROOT.glob("tests/**/*.md"),
    ]
    this = Path(__file__)
    found = [
        rel(f)
        for f in files
        if f != this and re.search(r"DESIGN\.md|\bresearch/|/work/shared", f.read_text())
    ]
    assert not found, f"these refer to files outside the repository: {found}"


# --------------------------------------------------------------- Redis keys
def code_key_families() -> set[str]:
    """``exolegs:<family>`` for every key name the code builds."""
    found: set[str] = set()
    for path in [*ROOT.glob("worker/**/*.py"), *ROOT.glob("web/**/*.py")]:
        text = path.read_text()
        found |= set(
            re.findall(
                r"\{(?:PREFIX|keys\.namespace\([a-z_]*\)|namespace\([a-z_]*\))\}:([a-z][a-z_-]*)",
                text,
            )
        )
        found |= set(re.findall(r"[\"'`]exolegs:([a-z][a-z_-]*)", text))
    # worker/metrics.py builds its own under PREFIX = "exolegs:metrics"
    return {f for f in found if f not in {"no-queue", "totals", "m", "h", "latency", "pumps"}}


def documented_key_families() -> set[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("## Redis keys") :]
    section = section[: section.index("\n## ", 3)]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {f for row in rows for f in re.findall(r"`exolegs:([a-z][a-z_-]*)", row)}


def test_every_redis_key_family_is_in_architecture_md_and_exists() -> None:
    code, docs = code_key_families(), documented_key_families()
    assert not code - docs, f"docs/architecture.md does not list exolegs:{sorted(code - docs)}"
    assert not docs - code, f"docs/architecture.md lists exolegs:{sorted(docs - code)}, unused"


def test_exotel_md_lists_every_error_the_code_classifies() -> None:
    from worker.errors import EXOTEL_CODES

    text = (ROOT / "docs" / "exotel.md").read_text()
    rows = set(re.findall(r"^\| (\d{3}) / (\d+) \|", text, re.MULTILINE))
    coded = {(str(status), str(code)) for status, code in EXOTEL_CODES if code is not None}
    assert coded == rows, (
        f"docs/exotel.md's error table differs from worker/errors.py: {coded ^ rows}"
    )


def test_architecture_md_names_every_module_and_only_modules_that_exist() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("## Modules") : text.index("## The path of a callback")]
    named = set(re.findall(r"`([a-z_]+)\.py`", section)) - {"__init__"}
    named |= {n for group in re.findall(r"`([a-z_]+)`, `([a-z_]+)`", section) for n in group}
    modules = {
        p.stem
        for p in [*ROOT.glob("worker/**/*.py"), *ROOT.glob("web/**/*.py")]
        if p.stem not in ("__init__", "__main__") and "crm" not in p.parts
    }
    assert not modules - named - SINK_MODULES, f"architecture.md omits {sorted(modules - named)}"
    assert not named - modules, (
        f"architecture.md names modules that do not exist: {named - modules}"
    )


SINK_MODULES = {
    "jsonl",
    "webhook",
    "sql",
    "hubspot",
    "zoho",
    "salesforce",
    "leadsquared",
    "null",
    "memory",
}
