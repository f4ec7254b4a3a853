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


def test_new_request_ids_are_random_hex_and_never_repeat() -> None:
    import os
    import threading

    from web.app import new_request_id

    ids = [new_request_id() for _ in range(2000)]

    def more() -> None:
        ids.extend(new_request_id() for _ in range(600))

    threads = [threading.Thread(target=more) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == len(ids) == 2000 + 4 * 600
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child's ids are not the ones the parent holds next
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 64).decode() != new_request_id()
