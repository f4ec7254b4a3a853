"""Every command and option explains itself, and every command's help ends with an example."""

from __future__ import annotations

import argparse
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.cli import main, parser

ROOT = Path(__file__).resolve().parents[3]


def commands(
    p: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from commands(child, (*path, name))


ALL = list(commands(parser()))


def test_every_command_is_listed() -> None:
    names = {" ".join(path) for path, _ in ALL}
    assert {
        "web",
        "worker",
        "dev",
        "fetch",
        "simulate",
        "check",
        "dead list",
        "dead show",
        "dead replay",
        "dead purge",
        "sinks list",
        "sinks check",
    } <= names


@pytest.mark.parametrize(("path", "command"), ALL, ids=[" ".join(p) or "exolegs" for p, _ in ALL])
def test_command_and_options_have_help(
    path: tuple[str, ...], command: argparse.ArgumentParser
) -> None:
    assert command.description, f"exolegs {' '.join(path)} has no description"
    for action in command._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                assert choice.help, f"exolegs {' '.join(path)} {choice.dest} has no summary"
        elif not isinstance(action, argparse._HelpAction):
            assert action.help, f"exolegs {' '.join(path)}: {action.dest} has no help"
    assert "``" not in command.format_help()  # no RST markup leaks into a terminal


@pytest.mark.parametrize(("path", "command"), ALL, ids=[" ".join(p) or "exolegs" for p, _ in ALL])
def test_help_ends_with_an_example_that_parses(
    path: tuple[str, ...], command: argparse.ArgumentParser
) -> None:
    text = command.format_help().rstrip()
    head, _, examples = (
        re.split(r"\n(examples?:)\n", text)[-3:] if "\nexample" in text else ("", "", "")
    )
    assert head, f"exolegs {' '.join(path)} --help does not end with an example"
    for example in examples.strip().splitlines():
        argv = shlex.split(example.strip())
        while re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # PORT=8000 exolegs web
            argv.pop(0)
        assert argv[0] == "exolegs", example
        args = parser().parse_args(argv[1:])
        assert tuple(argv[1 : 1 + len(path)]) == path
        assert callable(args.func)


def test_version_is_the_project_version(capsys: pytest.CaptureFixture[str]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"exolegs {version}"
