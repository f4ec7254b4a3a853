"""Every request has an id: the router's X-Request-ID or a new one, in its log lines and answer."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable

from flask import Flask

from worker.logs import configure_logging
from worker.settings import Settings


def test_each_request_logs_its_request_id(make_app: Callable[..., Flask]) -> None:
    stream = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=stream)
    app = make_app()

    def noisy() -> str:
        logging.getLogger("exolegs.web").warning("handled")
        return "ok"

    app.add_url_rule("/noisy", view_func=noisy)
    answer = app.test_client().get("/noisy", headers={"X-Request-ID": "router-abc"})
    assert answer.headers["X-Request-ID"] == "router-abc"
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["msg"] == "handled" and line["request_id"] == "router-abc"
    fresh = app.test_client().get("/noisy", headers={"X-Request-ID": "bad id <script>"})
    assert len(fresh.headers["X-Request-ID"]) == 32
    logging.getLogger("exolegs.web").warning("after")
    assert "request_id" not in json.loads(stream.getvalue().splitlines()[-1])
