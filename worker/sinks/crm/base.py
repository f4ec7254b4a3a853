"""The base class of the CRM sinks: HTTP session, agents file, recordings."""

from __future__ import annotations

import re
from typing import ClassVar

from worker.errors import SettingsError
from worker.sinks.base import CallRecord, Sink, SinkContext
from worker.sinks.crm.http import CrmHttp
from worker.sinks.crm.users import AgentDirectory


class CrmSink(Sink):
    """Common construction for the CRM sinks: HTTP session, agents file, recordings."""

    #: Human name used in every message ("HubSpot", "Zoho CRM"...).
    crm: ClassVar[str] = "CRM"

    def __init__(self, url: str, context: SinkContext) -> None:
        super().__init__(url, context)
        self.default_country = context.settings.default_country
        self.agents = AgentDirectory.from_query(self.query, self.default_country, self.crm)
        self.include_recordings = _flag("recordings", self.query.get("recordings"), default=True)
        self.http = CrmHttp(self.crm, secrets=self.url_secrets())

    def url_secrets(self) -> list[str]:
        """Values in this sink's URL that must never be shown."""
        found = []
        for name, value in self.query.items():
            if re.search(r"token|secret|key|password", name, re.IGNORECASE) and value:
                found.append(value)
        return found

    def owner_id(self, record: CallRecord) -> str | None:
        return self.agents.owner_for(record) if self.agents else None

    def recording(self, record: CallRecord) -> str | None:
        url = record.get("recording_url")
        if not self.include_recordings or not isinstance(url, str) or not url.strip():
            return None
        return url.strip()

    def close(self) -> None:
        self.http.close()


def _flag(name: str, value: str | None, *, default: bool) -> bool:
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError("SINKS", f"{name}= takes true or false, not {value!r}")
