"""The agents file: which CRM user owns a call, from the Exotel agent who took it."""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worker.calls.enrich import to_e164
from worker.errors import SettingsError
from worker.sinks.base import CallRecord
from worker.sinks.crm.calls import _legs

log = logging.getLogger(__name__)


def normalise_agent_key(value: str, default_country: str) -> str | None:
    """The lookup key for an agent: E.164, a lowercased SIP address, or a name.

    ``sip:Alice@Acme.sip.exotel.com`` and ``alice@acme.sip.exotel.com`` give the
    same key; ``09876543210``, ``+91 98765 43210`` and ``+919876543210`` give
    ``+919876543210`` (with IN as the default country); anything else is an
    Exotel user name, compared case-insensitively with whitespace collapsed.
    """
    text = value.strip()
    if not text:
        return None
    lowered = text.lower()
    if lowered.startswith(("sip:", "sips:")):
        return "sip:" + lowered.split(":", 1)[1]
    if "@" in text:
        return "sip:" + lowered
    number = to_e164(text, default_country)
    if number is not None:
        return number
    return "name:" + " ".join(text.split()).casefold()


class AgentDirectory:
    """Who in the CRM owns a call: agent contact_uri or Exotel user name -> CRM user id.

    The file is named by ``?agents=`` in the sink URL and is either a JSON
    object (``{"+919876543210": "123", "sip:asha@acme.sip.exotel.com": "456",
    "Sanjay Mishra": "789"}``) or a CSV of ``contact_uri,crm_user_id`` rows (a
    header row and ``#`` comments are allowed). It is re-read when its
    modification time changes; a file broken by an edit keeps the last good
    mapping (and logs why).
    """

    def __init__(self, path: Path, default_country: str, crm: str = "CRM") -> None:
        self.path = path
        self.default_country = default_country
        self.crm = crm
        self._lock = threading.Lock()
        self._mtime = self._stat()
        self.mapping = self._load()

    @classmethod
    def from_query(
        cls, query: Mapping[str, str], default_country: str, crm: str = "CRM"
    ) -> AgentDirectory | None:
        raw = query.get("agents")
        if not raw:
            return None
        return cls(Path(raw).expanduser(), default_country, crm)

    def _stat(self) -> float:
        try:
            return self.path.stat().st_mtime
        except OSError as err:
            raise SettingsError(
                "SINKS", f"{self.crm} agents file {self.path} cannot be read: {err.strerror}"
            ) from err

    def _load(self) -> dict[str, str]:
        try:
            text = self.path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            raise SettingsError(
                "SINKS", f"{self.crm} agents file {self.path} cannot be read: {err}"
            ) from err
        pairs = _parse_agents_text(text, self.path)
        mapping: dict[str, str] = {}
        for key, user in pairs:
            normal = normalise_agent_key(key, self.default_country)
            if normal is None or not user:
                raise SettingsError(
                    "SINKS", f"{self.crm} agents file {self.path}: empty agent or user in {key!r}"
                )
            mapping[normal] = user
        return mapping

    def _refresh(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except OSError as err:
            log.warning("agents file %s unreadable (%s); keeping the last mapping", self.path, err)
            return
        if mtime == self._mtime:
            return
        with self._lock:
            if mtime == self._mtime:
                return
            try:
                self.mapping = self._load()
            except SettingsError as err:
                log.warning("%s; keeping the last good mapping", err)
            self._mtime = mtime

    def user_for(self, value: str | None) -> str | None:
        if not value:
            return None
        key = normalise_agent_key(value, self.default_country)
        return self.mapping.get(key) if key else None

    def owner_for(self, record: CallRecord) -> str | None:
        """The CRM user of the agent who answered, else of the first agent dialled.

        The agent is matched by contact_uri (or its E.164 form), then by name.
        None when that agent is not in the file (the CRM then uses its default
        owner, usually the integration user).
        """
        self._refresh()
        agent = record.get("answered_by")
        if not isinstance(agent, Mapping):
            agents = record.get("agents") or []
            agent = agents[0] if agents and isinstance(agents[0], Mapping) else None
        if agent is None:
            return None
        for value in (agent.get("contact_uri"), _agent_e164(record, agent), agent.get("name")):
            user = self.user_for(value) if isinstance(value, str) else None
            if user:
                return user
        return None


def _agent_e164(record: CallRecord, agent: Mapping[str, Any]) -> str | None:
    for leg in _legs(record):
        if leg.get("contact_uri") == agent.get("contact_uri") and leg.get("phone_e164"):
            return str(leg["phone_e164"])
    return None


def _parse_agents_text(text: str, path: Path) -> list[tuple[str, str]]:
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise SettingsError("SINKS", f"agents file {path} is not valid JSON: {err}") from err
        pairs = []
        for key, value in data.items():
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise SettingsError(
                    "SINKS", f"agents file {path}: the user id for {key!r} must be a string"
                )
            pairs.append((str(key), str(value).strip()))
        return pairs
    if stripped.startswith("["):
        raise SettingsError(
            "SINKS", f"agents file {path}: expected a JSON object {{agent: crm_user_id}}"
        )
    pairs = []
    rows = csv.reader(io.StringIO(text))
    for number, row in enumerate(rows, start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if len(cells) != 2:
            raise SettingsError(
                "SINKS",
                f"agents file {path} line {number}: expected 'contact_uri,crm_user_id'",
            )
        if number == 1 and cells[1].lower() in ("crm_user_id", "user_id", "owner_id"):
            continue  # header row
        pairs.append((cells[0], cells[1]))
    return pairs
