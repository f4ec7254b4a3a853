"""The CRM's own field metadata, and the field names a sink writes because of it.

CRMs differ between editions and API versions (Zoho's ``Outgoing_Call_Status``
is ``Outbound_Call_Status`` in some orgs, a custom field may be missing or not
unique). Each CRM sink declares what it writes as :class:`FieldSpec` (a role,
the candidate API names, most widely documented first, and the values it
sends), reads the call object's metadata, and :func:`resolve` picks the names
the CRM really has. :class:`FieldCache` keeps the answer in this process for
an hour, so a delivery costs no extra call; when the metadata cannot be read
(no permission, the CRM is down) the documented first candidates are used.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from worker.errors import ConfigFaultError, PermanentError

log = logging.getLogger(__name__)

CACHE_SECONDS = 3600.0
FALLBACK_SECONDS = 300.0  # how long the documented defaults stand in after a failed read


@dataclass(frozen=True)
class FieldSpec:
    """One thing a sink writes: a role and the API names it may have."""

    role: str
    names: tuple[str, ...]
    required: bool = True
    #: Picklist values the sink sends; checked when the metadata lists options.
    values: tuple[str, ...] = ()
    #: When the field is missing: what to change in the CRM (one line).
    fix: str = ""

    @property
    def default(self) -> str:
        return self.names[0]


@dataclass(frozen=True)
class FieldInfo:
    """What the CRM's metadata says about one field."""

    name: str
    kind: str = ""
    options: tuple[str, ...] | None = None  # None: not a picklist (or not said)
    writable: bool = True
    unique: bool | None = None
    external_id: bool | None = None


@dataclass(frozen=True)
class FieldMap:
    """API names by role; ``None`` for an optional field this CRM does not have."""

    names: Mapping[str, str | None]
    from_metadata: bool
    fields: Mapping[str, FieldInfo] = field(default_factory=dict)

    def name(self, role: str) -> str | None:
        return self.names.get(role)

    def info(self, role: str) -> FieldInfo | None:
        name = self.names.get(role)
        return self.fields.get(name) if name else None


def defaults(specs: Iterable[FieldSpec]) -> FieldMap:
    """The most widely documented names, for when the metadata cannot be read."""
    return FieldMap({spec.role: spec.default for spec in specs}, from_metadata=False)


def resolve(
    specs: Iterable[FieldSpec], fields: Mapping[str, FieldInfo], *, what: str
) -> tuple[FieldMap, list[str]]:
    """Pick each role's API name from the metadata; list what is wrong, one line each.

    ``what`` names the object in messages ("Zoho CRM Calls"). A required field
    that is missing keeps its default name (the CRM will refuse it, with its
    own message); a missing optional one is left out of what the sink writes.
    """
    names: dict[str, str | None] = {}
    problems: list[str] = []
    for spec in specs:
        found = next((name for name in spec.names if name in fields), None)
        if found is None:
            names[spec.role] = spec.default if spec.required else None
            if spec.required:
                also = f" (or {', '.join(spec.names[1:])})" if len(spec.names) > 1 else ""
                problems.append(f"{what} has no field {spec.default}{also}: {spec.fix or 'add it'}")
            continue
        names[spec.role] = found
        info = fields[found]
        if not info.writable:
            problems.append(
                f"{what} field {found} is read-only for this user: give the integration "
                "user edit access to it (field-level security)"
            )
        if info.options is not None and spec.values:
            absent = [value for value in spec.values if value not in info.options]
            if absent:
                problems.append(
                    f"{what} field {found} has no picklist value "
                    f"{', '.join(repr(v) for v in absent)}: add "
                    f"{'it' if len(absent) == 1 else 'them'} to the field's picklist"
                )
    return FieldMap(names, from_metadata=True, fields=dict(fields)), problems


class FieldCache:
    """The resolved field names of one sink, read once an hour per process.

    ``load`` reads the metadata (one API call) and returns the fields by name.
    If the CRM refuses it (no permission to read metadata, an old API), the
    documented defaults stand in for a few minutes and the refusal is logged;
    no delivery fails because metadata could not be read. A CRM that is down
    (a transient error) fails the delivery, which would fail anyway.
    """

    def __init__(
        self,
        specs: Iterable[FieldSpec],
        load: Callable[[], Mapping[str, FieldInfo]],
        *,
        what: str,
        seconds: float = CACHE_SECONDS,
    ) -> None:
        self.specs = tuple(specs)
        self.load = load
        self.what = what
        self.seconds = seconds
        self._lock = threading.Lock()
        self._map: FieldMap | None = None
        self._until = 0.0

    def get(self) -> FieldMap:
        with self._lock:
            now = time.monotonic()
            if self._map is not None and now < self._until:
                return self._map
            try:
                fields = self.load()
            except (ConfigFaultError, PermanentError) as err:
                log.warning(
                    "%s: field metadata unavailable (%s); writing the documented field names",
                    self.what,
                    err.message,
                )
                self._map, self._until = defaults(self.specs), now + FALLBACK_SECONDS
                return self._map
            self._map, _ = resolve(self.specs, fields, what=self.what)
            self._until = now + self.seconds
            return self._map

    def forget(self) -> None:
        """Read the metadata again next time (the CRM refused a field we wrote)."""
        with self._lock:
            self._map, self._until = None, 0.0
