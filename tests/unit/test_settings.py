from __future__ import annotations

import pytest

from worker.errors import SettingsError
from worker.settings import Rate, Settings


def test_defaults_match_design() -> None:
    s = Settings.from_env({}, dotenv=False)
    assert s.exotel_region == "sg"
    assert s.exotel_url == "https://ccm-api.exotel.com"
    assert s.exotel_rate_limit == Rate(200, 60)
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.sinks == ("jsonl://./var/calls.jsonl",)
    assert (s.fetch_delay_seconds, s.retry_base_seconds, s.retry_max_seconds) == (30, 5, 600)
    assert s.retry_max_attempts == 12
    assert s.default_country == "IN"


def test_mumbai_region_and_base_url_override() -> None:
    assert Settings.from_env({"EXOTEL_REGION": "in"}).exotel_url == "https://ccm-api.in.exotel.com"
    s = Settings.from_env({"EXOTEL_REGION": "in", "EXOTEL_BASE_URL": "http://127.0.0.1:9/"})
    assert s.exotel_url == "http://127.0.0.1:9"


def test_tls_url_wins() -> None:
    s = Settings.from_env({"REDIS_URL": "redis://a:6379", "REDIS_TLS_URL": "rediss://b:6380"})
    assert s.redis_url == "rediss://b:6380"


def test_sinks_split_on_commas_and_spaces() -> None:
    s = Settings.from_env({"SINKS": "jsonl:///a.jsonl, null://  memory://x"})
    assert s.sinks == ("jsonl:///a.jsonl", "null://", "memory://x")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"EXOTEL_REGION": "eu"}, "EXOTEL_REGION"),
        ({"EXOTEL_RATE_LIMIT": "fast"}, "EXOTEL_RATE_LIMIT"),
        ({"EXOTEL_RATE_LIMIT": "0/minute"}, "EXOTEL_RATE_LIMIT"),
        ({"FETCH_DELAY_SECONDS": "-1"}, "FETCH_DELAY_SECONDS"),
        ({"FETCH_DELAY_SECONDS": "soon"}, "FETCH_DELAY_SECONDS"),
        ({"RETRY_MAX_ATTEMPTS": "0"}, "RETRY_MAX_ATTEMPTS"),
        ({"RETRY_BASE_SECONDS": "10", "RETRY_MAX_SECONDS": "5"}, "RETRY_MAX_SECONDS"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"DEFAULT_COUNTRY": "XX"}, "DEFAULT_COUNTRY"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"PORT": "99999"}, "PORT"),
        ({"EXOTEL_BASE_URL": "ftp://x"}, "EXOTEL_BASE_URL"),
        ({"EXOTEL_API_KEY": "k"}, "EXOTEL_ACCOUNT_SID"),
        ({"CALLBACK_TOKEN": "short"}, "CALLBACK_TOKEN"),
        ({"CALLBACK_ALLOWED_IPS": "10.0.0.0/8, banana"}, "CALLBACK_ALLOWED_IPS"),
        ({"SINKS": "not-a-url"}, "SINKS"),
    ],
)
def test_bad_value_names_the_variable_in_one_line(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env, dotenv=False)
    message = str(info.value)
    assert message.startswith(f"{variable}:")
    assert "\n" not in message


def test_secrets_are_listed_for_scrubbing() -> None:
    s = Settings.from_env(
        {
            "EXOTEL_ACCOUNT_SID": "acme1",
            "EXOTEL_API_KEY": "key123",
            "EXOTEL_API_TOKEN": "tok-secret-value",
            "CALLBACK_TOKEN": "aaaaaaaaaaaaaaaaaaaa,bbbbbbbbbbbbbbbbbbbb",
            "SINKS": "webhook+https://h/p?secret=whsec_c2VjcmV0",
        }
    )
    secrets = s.secrets()
    for value in (
        "tok-secret-value",
        "aaaaaaaaaaaaaaaaaaaa",
        "bbbbbbbbbbbbbbbbbbbb",
        "whsec_c2VjcmV0",
    ):
        assert value in secrets
    assert "tok-secret-value" not in repr(s)
