"""Serve the exolegs edge or the bare-Flask baseline under identical gunicorn options.

    python -m bench.serve edge|baseline --bind 127.0.0.1:PORT

Both read the same environment into one ``Settings`` and run
``web.server.Server`` with ``gunicorn_options(settings, bind=...)``; the edge
goes through ``web.server.serve``, which is what ``exolegs web`` runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue

from web.server import Server, gunicorn_options, serve
from worker.settings import Settings


def baseline_app() -> Flask:
    """The floor: routing and a tiny JSON answer, no parsing, no Redis."""
    app = Flask("baseline")

    @app.route("/exotel/callback/<token>", methods=["GET", "POST"])
    def callback(token: str) -> ResponseReturnValue:
        return jsonify(accepted=True)

    @app.get("/healthz")
    def healthz() -> ResponseReturnValue:
        return jsonify(ok=True)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("app", choices=["edge", "baseline"])
    parser.add_argument("--bind", required=True)
    parser.add_argument(
        "--stock-gthread",
        action="store_true",
        help="gunicorn's own gthread worker instead of web/gthread.py's (for comparison)",
    )
    args = parser.parse_args()
    settings = Settings.from_env()
    overrides: dict[str, Any] = {"bind": args.bind}
    if args.stock_gthread:
        overrides["worker_class"] = "gthread"
    if args.app == "edge":
        serve(settings, **overrides)
        return

    def factory() -> Any:
        return baseline_app()

    Server(factory, gunicorn_options(settings, **overrides)).run()


if __name__ == "__main__":
    main()
