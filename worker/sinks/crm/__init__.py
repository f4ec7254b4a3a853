"""What the CRM sinks (HubSpot, Zoho, Salesforce, LeadSquared) share, by concern.

- :mod:`~worker.sinks.crm.http`: one ``requests`` session per sink with
  timeouts, no redirects and no retries of its own; network failures become
  :class:`~worker.errors.TransientError` with secrets scrubbed.
- :mod:`~worker.sinks.crm.users`: the optional ``?agents=`` file that maps an
  Exotel agent (phone number, SIP URI or user name) to the CRM user who owns
  the call.
- :mod:`~worker.sinks.crm.phone`: lookup formats, and which contacts may be
  sent as phone numbers at all (never masked numbers or SIP URIs).
- :mod:`~worker.sinks.crm.calls`: the Exotel status -> CRM value table,
  direction, duration and time formats, and the leg summary.
- :mod:`~worker.sinks.crm.oauth`: access tokens cached in Redis for every
  worker, minted by one worker at a time.
- :mod:`~worker.sinks.crm.fields`: the CRM's own field metadata, the field
  names a sink resolves from it (cached in this process), and the problems
  ``exolegs sinks check`` reports about them.
- :mod:`~worker.sinks.crm.base`: :class:`CrmSink`, the sinks' common base.

Everything is re-exported here, so ``from worker.sinks.crm import …`` works.
"""

from __future__ import annotations

from worker.calls.exotel import (
    parse_retry_after,
)
from worker.sinks.crm.base import (
    CrmSink,
)
from worker.sinks.crm.calls import (
    HUBSPOT_BUSY,
    HUBSPOT_CONNECTED,
    HUBSPOT_NO_ANSWER,
    OUTCOMES,
    Outcome,
    call_direction,
    call_end,
    call_outcome,
    call_start,
    call_title,
    customer_label,
    duration_mmss,
    duration_ms,
    iso_utc,
    iso_with_offset,
    leg_summary,
    parse_time,
    summary_html,
    summary_text,
    talk_seconds,
    utc_text,
)
from worker.sinks.crm.http import (
    CrmHttp,
    response_json,
    seconds_until_utc_midnight,
)
from worker.sinks.crm.oauth import (
    Token,
    cache_seconds,
    drop_token,
    forget_local_tokens,
    get_token,
    read_private_key_file,
    token_key,
)
from worker.sinks.crm.phone import (
    PhoneFormats,
    customer_phone,
    display_number,
    phone_formats,
)
from worker.sinks.crm.users import (
    AgentDirectory,
    normalise_agent_key,
)

__all__ = [
    "HUBSPOT_BUSY",
    "HUBSPOT_CONNECTED",
    "HUBSPOT_NO_ANSWER",
    "OUTCOMES",
    "AgentDirectory",
    "CrmHttp",
    "CrmSink",
    "Outcome",
    "PhoneFormats",
    "Token",
    "cache_seconds",
    "call_direction",
    "call_end",
    "call_outcome",
    "call_start",
    "call_title",
    "customer_label",
    "customer_phone",
    "display_number",
    "drop_token",
    "duration_mmss",
    "duration_ms",
    "forget_local_tokens",
    "get_token",
    "iso_utc",
    "iso_with_offset",
    "leg_summary",
    "normalise_agent_key",
    "parse_retry_after",
    "parse_time",
    "phone_formats",
    "read_private_key_file",
    "response_json",
    "seconds_until_utc_midnight",
    "summary_html",
    "summary_text",
    "talk_seconds",
    "token_key",
    "utc_text",
]
