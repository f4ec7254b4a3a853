"""Progress shows on a terminal and stays out of pipes and logs."""

from __future__ import annotations

import io

from worker.cli.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_sees_the_count_and_a_final_newline() -> None:
    out = Terminal()
    with Progress("replaying", total=3, stream=out, interval=0) as progress:
        for _ in range(3):
            progress.advance()
    text = out.getvalue()
    assert "replaying 1/3 (33%)" in text and text.endswith("replaying 3/3 (100%)\n")


def test_without_a_total_it_counts() -> None:
    out = Terminal()
    with Progress("purging", stream=out, interval=0) as progress:
        progress.advance(500)
        progress.advance(20)
    assert out.getvalue().endswith("purging 520\n")


def test_a_pipe_sees_nothing() -> None:
    out = io.StringIO()
    with Progress("replaying", total=2, stream=out, interval=0) as progress:
        progress.advance(2)
    assert out.getvalue() == ""


def test_nothing_done_draws_nothing() -> None:
    out = Terminal()
    with Progress("purging", stream=out):
        pass
    assert out.getvalue() == ""
