"""``GET /metrics``: Prometheus text, the same totals on every web process.

Counters come from Redis (see :mod:`worker.metrics`), gauges are read from
the job book, the dead letters and the circuits at scrape time. Served only
when ``METRICS_TOKEN`` is set, to ``Authorization: Bearer <METRICS_TOKEN>``.
"""

from __future__ import annotations

import hmac
from collections import Counter as Tally
from typing import TYPE_CHECKING

from flask import Blueprint, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from worker import metrics
from worker.jobs import JobId
from worker.jobs.circuit import open_circuits

if TYPE_CHECKING:
    from web.app import Edge

bp = Blueprint("metrics", __name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@bp.get("/metrics")
def scrape() -> ResponseReturnValue:
    edge = current_app.extensions["exolegs"]
    token = edge.settings.metrics_token
    sent = request.headers.get("Authorization", "")
    if not sent.startswith("Bearer ") or not hmac.compare_digest(
        sent.removeprefix("Bearer ").strip().encode(), token.encode()
    ):
        response = jsonify(error="send Authorization: Bearer <METRICS_TOKEN>")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return Response(
        metrics.render(metrics.totals(edge.runtime.redis), gauges(edge)), content_type=CONTENT_TYPE
    )


def gauges(edge: Edge) -> list[metrics.Gauge]:
    rt = edge.runtime
    G = metrics.Gauge
    book = rt.book.backlog()
    circuits = open_circuits(rt.redis)
    parked = sum(int(rt.redis.scard(f"{rt.circuit(n).key}:parked")) for n in circuits)
    out = [
        G(
            "exolegs_jobs_booked",
            "Jobs in the job book (waiting, overdue or running).",
            book["booked"],
        ),
        G(
            "exolegs_jobs_overdue",
            "Jobs whose due time has passed and that no worker holds.",
            book["overdue"],
        ),
        G(
            "exolegs_jobs_oldest_overdue_seconds",
            "Age of the oldest overdue job: the queue latency to autoscale on.",
            book["oldest_overdue_seconds"],
        ),
        G("exolegs_jobs_parked", "Jobs parked behind an open circuit.", parked),
        G("exolegs_circuits_open", "Upstreams whose circuit is open.", len(circuits)),
        G(
            "exolegs_pumps_alive",
            "Worker job pumps seen in the last 15 seconds.",
            metrics.pumps_alive(rt.redis),
        ),
        G(
            "exolegs_spooled_callbacks",
            "Callbacks in this web process's disk spool.",
            edge.spool.count(),
        ),
    ]
    by_sink: Tally[str] = Tally()
    for job_id in rt.dead.ids():  # ids only: the sink is in the job id
        by_sink[JobId.parse(job_id).sink or "legs"] += 1
    for sink in sorted({*rt.sinks, "legs", *by_sink}):
        out.append(
            G(
                "exolegs_dead_letters",
                "Dead letters waiting, by sink ('legs': the legs fetch).",
                by_sink[sink],
                {"sink": sink},
            )
        )
    return out
