"""Gunicorn's own access and error logs, which bypass the root logger, mask tokens and secrets."""

from __future__ import annotations

import base64
import datetime
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn.config import Config

from web.server import MaskingLogger, gunicorn_options
from worker.settings import Settings

TOKEN = "callback-token-new-0123456789abcdef"
OLD = "callback-token-old-fedcba9876543210"
API_TOKEN = "exo-api-token-abcdefghij0123456789"
DSN = "https://0123456789abcdef0123456789abcdef@o1.ingest.sentry.io/1"


def gunicorn_logger(log_level: str = "DEBUG") -> MaskingLogger:
    settings = Settings.from_env(
        {
            "CALLBACK_TOKEN": f"{TOKEN},{OLD}",
            "EXOTEL_ACCOUNT_SID": "acme1",
            "EXOTEL_API_KEY": "exo-key-1",
            "EXOTEL_API_TOKEN": API_TOKEN,
            "SENTRY_DSN": DSN,
            "LOG_LEVEL": log_level,
        },
        dotenv=False,
    )
    cfg = Config()
    for key, value in gunicorn_options(settings).items():
        if value is not None:
            cfg.set(key, value)
    logger: MaskingLogger = cfg.logger_class(cfg)
    return logger


def access_line(logger: MaskingLogger, uri: str, headers: list[tuple[str, str]]) -> None:
    path, _, query = uri.partition("?")
    environ = {
        "REQUEST_METHOD": "POST",
        "RAW_URI": uri,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "203.0.113.9",
        "HTTP_REFERER": f"https://edge.example.com/exotel/callback/{OLD}",
        "HTTP_USER_AGENT": f"curl {API_TOKEN}",
    }
    resp = SimpleNamespace(status="200 OK", headers=[], sent=42)
    req = SimpleNamespace(headers=headers)
    logger.access(resp, req, environ, datetime.timedelta(milliseconds=3))


def test_access_log_masks_every_callback_token_and_known_secret(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logger = gunicorn_logger()
    auth = "Basic " + base64.b64encode(f"exo-key-1:{API_TOKEN}".encode()).decode()
    access_line(logger, f"/exotel/callback/{TOKEN}?CallSid=a1", [("AUTHORIZATION", auth)])
    access_line(logger, "/exotel/callback/a-guess-that-is-no-token?x=1", [])
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert len(lines) == 2
    assert '"POST /exotel/callback/***?CallSid=a1 HTTP/1.1" 200 42' in lines[0]
    assert '"https://edge.example.com/exotel/callback/***"' in lines[0]
    assert "/exotel/callback/***?x=1" in lines[1]
    for secret in (TOKEN, OLD, API_TOKEN, "a-guess-that-is-no-token"):
        assert secret not in out


@pytest.mark.parametrize(
    "uri",
    [
        "/%65xotel/callback/{t}?CallSid=a1",
        "/exotel%2Fcallback/{t}",
        "/exotel/callback/%74{rest}",
        "/%2565xotel/callback/%2574{rest}",
        "/exotel/%63allback/" + "".join(f"%{ord(c):02X}" for c in TOKEN),
    ],
)
def test_access_log_masks_a_percent_encoded_path(
    uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The router decodes the path, so an encoded one still reaches the callback."""
    logger = gunicorn_logger()
    logger.cfg.set("access_log_format", '"%(r)s" %(U)s %({raw_uri}e)s')
    access_line(logger, uri.format(t=TOKEN, rest=TOKEN[1:]), [])
    out = capsys.readouterr().out
    assert "/exotel/callback/***" in out
    for secret in (TOKEN, TOKEN[1:], TOKEN[4:]):
        assert secret not in out, out


def test_a_custom_access_format_with_headers_is_scrubbed_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logger = gunicorn_logger()
    logger.cfg.set("access_log_format", "%({authorization}i)s %({raw_uri}e)s %(U)s %(q)s")
    auth = "Basic " + base64.b64encode(f"exo-key-1:{API_TOKEN}".encode()).decode()
    access_line(logger, f"/exotel/callback/{TOKEN}?token={TOKEN}", [("AUTHORIZATION", auth)])
    out = capsys.readouterr().out
    assert "Basic ***" in out
    for secret in (TOKEN, API_TOKEN, auth[6:]):
        assert secret not in out


def test_error_log_masks_request_uris_and_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    logger = gunicorn_logger()
    try:
        raise ValueError(f"bad thing with {API_TOKEN}")
    except ValueError:
        logger.exception("Error handling request %s %s", "POST", f"/exotel/callback/{TOKEN}?a=1")
    logger.debug("sentry at %s", DSN)
    logger.info("Listening at: http://0.0.0.0:8000")
    err = capsys.readouterr().err
    assert "Error handling request POST /exotel/callback/***?a=1" in err
    assert "ValueError: bad thing with ***" in err
    assert "sentry at ***" in err
    for secret in (TOKEN, API_TOKEN, DSN):
        assert secret not in err


def test_reopening_logs_keeps_the_scrubbing(capsys: pytest.CaptureFixture[str]) -> None:
    logger = gunicorn_logger()
    logger.setup(logger.cfg)  # what a configuration reload (SIGHUP) does
    logger.info("token %s", TOKEN)
    err = capsys.readouterr().err
    assert "token ***" in err and TOKEN not in err


def test_access_log_only_at_debug() -> None:
    def options(level: str) -> dict[str, Any]:
        settings = Settings.from_env({"CALLBACK_TOKEN": TOKEN, "LOG_LEVEL": level}, dotenv=False)
        return gunicorn_options(settings)

    assert options("DEBUG")["accesslog"] == "-"
    assert options("INFO")["accesslog"] is None
    assert issubclass(options("INFO")["logger_class"], MaskingLogger)
