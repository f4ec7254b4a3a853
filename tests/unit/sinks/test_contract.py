"""The contract every sink keeps, run against every case in ``CONTRACT_CASES``.

(a) a record delivered once is held once, unchanged; (b) through the delivery
ledger a call is delivered once, and a forced replay leaves a natively
idempotent destination with one copy; (c) failures are classified as
retryable or not; (d) names, URLs, reprs and errors never show secrets;
(e) ``check()`` describes a healthy sink in words.
"""

from __future__ import annotations

import copy
import json

import pytest
import redis

from tests.unit.sinks.conftest import (
    SCHEMA,
    CaseEnv,
    FaultKind,
    SinkCase,
    as_json,
    new_call_sid,
    sample_record,
    with_params,
)
from worker.errors import ExolegsError
from worker.jobs import ledger
from worker.redact import url_secrets
from worker.settings import Settings
from worker.sinks import registry
from worker.sinks.base import Sink


def _secrets(case: SinkCase) -> list[str]:
    return [s for s in (*case.secrets, *url_secrets(case.sink.url)) if s]


def _assert_hidden(case: SinkCase, *texts: str) -> None:
    for secret in _secrets(case):
        for shown in texts:
            assert secret not in shown, f"a secret of {case.sink.name} leaked into {shown!r}"


def _held(case: SinkCase, call_sid: str) -> list[dict[str, object]]:
    if case.read_back is None:
        pytest.skip(f"{case.sink.scheme}:// keeps nothing that can be read back")
    return case.read_back(call_sid)


def test_sample_record_matches_the_published_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    if not SCHEMA.is_file():
        pytest.skip(f"{SCHEMA} is not written yet")
    jsonschema.validate(as_json(sample_record(new_call_sid())), json.loads(SCHEMA.read_text()))


# (a) ------------------------------------------------------------------------


def test_a_delivered_record_is_held_once_and_unchanged(sink_case: SinkCase) -> None:
    call_sid, other = new_call_sid(), new_call_sid()
    record = sink_case.record(call_sid)
    before = copy.deepcopy(record)

    sink_case.sink.deliver(record)

    assert record == before, "deliver() must not change the record it was given"
    held = _held(sink_case, call_sid)
    assert len(held) == 1
    if sink_case.echoes_record:
        assert held[0] == as_json(record)
    assert _held(sink_case, other) == []
    lookup = getattr(sink_case.sink, "lookup", None)
    if lookup is not None:  # optional: "does the destination hold this call?"
        assert lookup(call_sid) in (True, None)
        assert lookup(other) in (False, None)


# (b) ------------------------------------------------------------------------


def test_the_ledger_delivers_a_call_once(
    sink_case: SinkCase, redis_client: redis.Redis, settings: Settings
) -> None:
    sink, call_sid = sink_case.sink, new_call_sid()
    record = sink_case.record(call_sid)
    keep = settings.retention_seconds

    assert ledger.deliver_once(redis_client, sink, record, retention_seconds=keep) is True
    assert ledger.deliver_once(redis_client, sink, record, retention_seconds=keep) is False
    assert ledger.delivered(redis_client, call_sid, sink.name)
    if sink_case.read_back is not None:
        assert len(sink_case.read_back(call_sid)) == 1

    # A forced replay bypasses the ledger: only the destination can keep one copy.
    assert ledger.deliver_once(redis_client, sink, record, retention_seconds=keep, force=True)
    if sink_case.read_back is not None:
        held = sink_case.read_back(call_sid)
        if sink.native_idempotency:
            assert len(held) == 1, f"{sink.name} claims native idempotency but holds {len(held)}"
        else:
            assert len(held) >= 1


# (c) ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["transient", "permanent"])
def test_failures_are_classified(
    sink_case: SinkCase, kind: FaultKind, redis_client: redis.Redis, settings: Settings
) -> None:
    arrange = sink_case.faults.get(kind)
    if arrange is None:
        pytest.skip(f"{sink_case.sink.scheme}:// has no {kind} failure to inject")
    failing: Sink = arrange()
    call_sid = new_call_sid()
    record = sink_case.record(call_sid)

    with pytest.raises(ExolegsError) as caught:
        ledger.deliver_once(
            redis_client, failing, record, retention_seconds=settings.retention_seconds
        )

    err = caught.value
    assert err.retryable is (kind == "transient"), f"{kind} fault classified as {err.kind}"
    assert err.message.strip()
    assert not ledger.delivered(redis_client, call_sid, failing.name), (
        "a failed delivery must not be recorded as delivered"
    )
    _assert_hidden(sink_case, str(err), repr(err), err.message)


# (d) ------------------------------------------------------------------------


def test_names_and_urls_hide_secrets(sink_case: SinkCase, case_env: CaseEnv) -> None:
    sink = sink_case.sink
    assert isinstance(sink.name, str) and sink.name
    assert registry.load(registry.scheme_of(sink.url)) is type(sink), (
        "the sink must be reachable through the exolegs.sinks entry point of its scheme"
    )
    _assert_hidden(sink_case, sink.name, sink.display_url, repr(sink), str(sink))

    renamed = case_env.build(with_params(sink.url, name="contract-renamed"))
    assert renamed.name == "contract-renamed"


# (e) ------------------------------------------------------------------------


def test_check_describes_a_healthy_sink(sink_case: SinkCase) -> None:
    said = sink_case.sink.check()
    assert isinstance(said, str) and said.strip()
    _assert_hidden(sink_case, said)
