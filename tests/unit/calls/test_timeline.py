"""worker.calls.timeline: the entry the intake script appends for each callback."""

from __future__ import annotations

import json

import pytest

from worker.calls import timeline


@pytest.mark.parametrize(
    ("outcome", "code"),
    [
        ("terminal", "completed"),
        ("answered", None),
        ("answered", ""),
        ("agent-incoming-busy", "x"),
        ('quo"te\\back', "tab\there"),
        ("n\u00e9on", "\u0915\u0949\u0932"),
        ("\x00\x1f", "\u2028"),
    ],
)
@pytest.mark.parametrize("at", [1733012345.0, 1733012345.1234, 1733012345.9999, 0.0005, 1e16])
def test_callback_entry_is_what_entry_and_dumps_write(
    outcome: str, code: str | None, at: float
) -> None:
    expected = timeline.dumps(timeline.entry(timeline.Kind.CALLBACK, outcome, code=code, at=at))
    assert timeline.callback_entry(outcome, code, at) == expected
    assert json.loads(timeline.callback_entry(outcome, code, at))["o"] == outcome


def test_callback_entry_takes_the_time_now() -> None:
    entry = json.loads(timeline.callback_entry("terminal", "busy"))
    assert set(entry) == {"t", "k", "o", "c"}
    assert entry["k"] == "callback"
