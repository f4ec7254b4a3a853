"""Turn the fields of any Exotel callback into one normalised :class:`CallbackEvent`.

Exotel reaches the same URL with several unrelated shapes (docs/exotel.md
summarises them, with Exotel's pages): the v1 StatusCallback, Passthru and
Connect-applet GETs, and the CCM ``status_callback``. The web edge and the
worker must agree on which of them end a call, so the rule lives here, pure
and without Flask, and both sides import it.

Call sid: the first of ``CallSid``, ``call_sid``, ``Sid``, ``CallSID`` that is
not ``None``; it must be a string matching ``CALL_SID_RE`` in full, else
:class:`CallbackError`. Every other field is optional and may have any type;
values that are not short ``[a-z0-9-]`` tokens after normalisation
(lower-case, ``_`` and spaces become ``-``, ``cancelled`` becomes
``canceled``) are treated as unknown.

Decision table, first matching row wins. ``EventType`` means ``EventType``
or ``event_type``, compared case-insensitively; blank strings count as absent.

| fields                                  | event          | term. | seen in               |
|-----------------------------------------|----------------|-------|-----------------------|
| Status = free, or Status = busy with    | agent-<type>-  | no    | agent pass-through,   |
|   DialWhomNumber (an agent line state)  |   <state>      |       | Connect Dial/Terminal |
| EventType = terminal                    | terminal       | yes   | v1, CCM, Connect      |
| EventType = answered / ringing / dial   | that event     | no    | v1 answered (Status   |
|                                         |                |       | in-progress), Connect |
|                                         |                |       | Dial (Status busy)    |
| EventType = anything else               | it / "unknown" | no    | undocumented          |
| CallType = call-attempt                 | call-attempt   | no    | Passthru mid-flow     |
| CallType = completed / client-hangup /  | terminal       | yes   | Passthru, end of flow |
|   incomplete / voicemail                |                |       |                       |
| status in TERMINAL_STATUSES: completed, | terminal       | yes   | v1 without EventType, |
|   failed, busy, no-answer, canceled,    |                |       | Passthru DialCall-    |
|   CCM agent-unanswered, agent-cancelled |                |       | Status / CallStatus,  |
|   customer-unanswered, from/to-leg-     |                |       | CCM                   |
|   unanswered, from-leg-cancelled,       |                |       |                       |
|   to/from-leg-no-dial                   |                |       |                       |
| call_state = terminal                   | terminal       | yes   | CCM                   |
| any other status                        | that status    | no    | in-progress, ringing, |
|                                         |                |       | queued, free          |
| no usable status                        | "status"       | no    | when in doubt         |

An agent line hook (Exotel support article 48284 "agent passthru", and the
Connect applet's Dial/Terminal hooks) reports whether an *agent's* phone is
ringing (``busy``) or free again (``free``), not how the call ended: it never
ends the call and its line state is never the call's status (``status`` is
None). The literal string ``null`` (Passthru sends ``DialCallStatus=null``)
counts as absent in every field, as blank strings do.

The status is the first usable token among ``Status``, ``DialCallStatus``,
``CallStatus``, ``status``, ``call_status``: Passthru's ``DialCallStatus``
(who was dialled) says more than ``CallStatus`` (the caller's leg, often
``completed`` even when nobody answered). ``CallType`` is not a call status
and never fills ``status``; a CCM callback without a status field has
``status=None``.

When in doubt the event is *not* terminal: only a documented end-of-call
signal should schedule a legs fetch; fetching mid-call only earns Exotel's
"legs not found" errors and a record with a wrong status.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.settings import CALL_SID_RE

__all__ = [
    "CALL_SID_RE",
    "LINE_STATES",
    "TERMINAL_STATUSES",
    "CallbackError",
    "CallbackEvent",
    "absent",
    "event_from_fields",
]

SID_KEYS = ("CallSid", "call_sid", "Sid", "CallSID")
EVENT_KEYS = ("EventType", "event_type")
STATUS_KEYS = ("Status", "DialCallStatus", "CallStatus", "status", "call_status")
DIRECTION_KEYS = ("Direction", "direction")

V1_TERMINAL = frozenset({"completed", "failed", "busy", "no-answer", "canceled"})
CCM_TERMINAL = frozenset(
    {
        # v2 call-details statuses
        "agent-unanswered",
        "customer-unanswered",
        "agent-cancelled",
        # v3 call-details statuses
        "from-leg-unanswered",
        "to-leg-unanswered",
        "from-leg-cancelled",
        "to-leg-no-dial",
        "from-leg-no-dial",
    }
)
TERMINAL_STATUSES = V1_TERMINAL | CCM_TERMINAL
TERMINAL_CALL_TYPES = frozenset({"completed", "client-hangup", "incomplete", "voicemail"})
NON_TERMINAL_EVENTS = frozenset({"answered", "ringing", "dial"})
_DIRECTIONS = {
    "inbound": "inbound",
    "incoming": "inbound",
    "outbound": "outbound",
    "outbound-dial": "outbound",
    "outbound-api": "outbound",
    "outgoing": "outbound",
}
_ALIASES = {"cancelled": "canceled", "noanswer": "no-answer"}
LINE_STATES = frozenset({"busy", "free"})
AGENT_KEYS = ("DialWhomNumber",)
_TOKEN_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_DIAL_TARGET_RE = re.compile(r"[^0-9A-Za-z+]")

_repr = reprlib.Repr()
_repr.maxstring = 64
_repr.maxother = 64
_repr.maxlist = 4
_repr.maxtuple = 4
_repr.maxdict = 4
_repr.maxlevel = 2


class CallbackError(ValueError):
    """A refused callback; str() is the one-line reason given to the client (400)."""


@dataclass(frozen=True)
class CallbackEvent:
    """One callback, normalised: enough to dedupe it and decide whether to fetch legs."""

    call_sid: str
    event: str
    status: str | None
    terminal: bool
    direction: str | None
    fields: dict[str, Any]

    @property
    def dedupe_key(self) -> str:
        """Same call and same event give the same key, so Exotel's retries collapse.

        The call sid is included so the key is safe to use on its own. A
        Connect-applet Dial/Ringing/Answered event also carries the number being
        dialled: ringing agent A and then agent B are two events, not one.
        """
        key = f"{self.call_sid}:{self.event}:{self.status or '-'}"
        if not self.terminal:
            target = self.fields.get("DialWhomNumber")
            if isinstance(target, str) and target:
                cleaned = _DIAL_TARGET_RE.sub("", target)[:32]
                if cleaned:
                    key = f"{key}:{cleaned}"
        return key


def absent(value: Any) -> bool:
    """None, a blank string, or the literal ``null`` Passthru sends for "no value"."""
    if value is None:
        return True
    return isinstance(value, str) and (not value.strip() or value.strip().lower() == "null")


def _token(value: Any) -> str | None:
    """A short lower-case token, or None when the value is absent or not token-like."""
    if not isinstance(value, str) or absent(value):
        return None
    text = value.strip().lower().replace("_", "-").replace(" ", "-")
    text = _ALIASES.get(text, text)
    return text if _TOKEN_RE.fullmatch(text) else None


def _first_present(fields: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[bool, Any]:
    """The first value that is neither None, blank, nor the literal ``null``."""
    for key in keys:
        value = fields.get(key)
        if absent(value):
            continue
        return True, value
    return False, None


def _line_state(fields: Mapping[str, Any]) -> str | None:
    """``busy``/``free`` when this is an agent line hook, else None (see the table)."""
    state = _token(fields.get("Status"))
    if state == "free":
        return state
    if state == "busy" and any(not absent(fields.get(key)) for key in AGENT_KEYS):
        return state
    return None


def _shown(value: Any) -> str:
    """A repr of attacker input short enough to echo back: at most 64 characters."""
    text = _repr.repr(value)
    return text if len(text) <= 64 else text[:61] + "..."


def _call_sid(fields: Mapping[str, Any]) -> str:
    for key in SID_KEYS:
        value = fields.get(key)
        if value is None or (isinstance(value, str) and value.strip().lower() == "null"):
            continue
        if isinstance(value, str) and CALL_SID_RE.fullmatch(value):
            return value
        raise CallbackError(f"malformed call sid: {_shown(value)}")
    raise CallbackError("missing call sid (CallSid or call_sid)")


def _direction(fields: Mapping[str, Any]) -> str | None:
    _, value = _first_present(fields, DIRECTION_KEYS)
    token = _token(value)
    return _DIRECTIONS.get(token) if token else None


def _classify(fields: Mapping[str, Any], status: str | None) -> tuple[str, bool]:
    """(event, terminal) following the table in the module docstring."""
    has_event, raw_event = _first_present(fields, EVENT_KEYS)
    if has_event:
        event = _token(raw_event) or "unknown"
        return event, event == "terminal"
    call_type = _token(fields.get("CallType"))
    if call_type == "call-attempt":
        return call_type, False
    if call_type in TERMINAL_CALL_TYPES:
        return "terminal", True
    if status in TERMINAL_STATUSES:
        return "terminal", True
    if _token(fields.get("call_state")) == "terminal":
        return "terminal", True
    # "terminal" as a *status* is undocumented: in doubt, and the event name must not lie
    return (status if status and status != "terminal" else "status"), False


def event_from_fields(fields: Mapping[str, Any]) -> CallbackEvent:
    """Normalise one callback's fields; raises CallbackError only for a bad call sid."""
    call_sid = _call_sid(fields)
    line = _line_state(fields)
    if line is not None:
        _, raw_event = _first_present(fields, EVENT_KEYS)
        kind = _token(raw_event) or "line"
        return CallbackEvent(
            call_sid=call_sid,
            event=f"agent-{kind}-{line}",
            status=None,
            terminal=False,
            direction=_direction(fields),
            fields=dict(fields),
        )
    status = next((t for t in map(_token, map(fields.get, STATUS_KEYS)) if t), None)
    event, terminal = _classify(fields, status)
    return CallbackEvent(
        call_sid=call_sid,
        event=event,
        status=status,
        terminal=terminal,
        direction=_direction(fields),
        fields=dict(fields),
    )
