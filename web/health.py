"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """The process is up; says nothing about its dependencies."""
    return jsonify(ok=True)


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """Redis reachable (503 if not); open circuits and spooled callbacks reported.

    With ``?strict=1`` a degraded state (an open circuit, a non-empty spool)
    also answers 503, for monitors that only look at the status code.
    """
    from worker.jobs.circuit import open_circuits

    edge = current_app.extensions["exolegs"]
    body: dict[str, Any] = {"redis": "ok", "problems": []}
    try:
        edge.runtime.redis.ping()
        circuits = open_circuits(edge.runtime.redis)
    except Exception as err:  # noqa: BLE001 - any Redis failure means not ready
        body.update(redis=f"unreachable: {type(err).__name__}", status="unavailable")
        body["spooled"] = edge.spool.count()
        return jsonify(body), 503
    for name, state in circuits.items():
        body["problems"].append(f"{name}: {state.get('reason', 'circuit open')}")
    spooled = edge.spool.count()
    body["spooled"] = spooled
    if spooled:
        body["problems"].append(f"{spooled} callback(s) spooled on disk, waiting for Redis")
    body["status"] = "degraded" if body["problems"] else "ok"
    strict = request.args.get("strict") in ("1", "true", "yes")
    return jsonify(body), (503 if strict and body["problems"] else 200)
