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


# ------------------------------------------------------------------ accounts
TOK_A = "north-callback-token-0123456789"
TOK_B = "south-callback-token-0123456789"


def _two(**south: object) -> str:
    import json

    accounts = {
        "north": {
            "sid": "acme_north",
            "api_key": "k_north",
            "api_token": "${NORTH_TOKEN}",
            "callback_tokens": [TOK_A],
        },
        "south": {
            "sid": "acme_south",
            "api_key": "k_south",
            "api_token": "t_south_secret",
            "region": "in",
            "rate_limit": "60/minute",
            "callback_tokens": TOK_B,
            "sinks": ["memory://south"],
            "default_country": "sg",
            **south,
        },
    }
    return json.dumps(accounts)


def test_without_exotel_accounts_the_single_set_is_the_default_account() -> None:
    s = Settings.from_env(
        {
            "EXOTEL_ACCOUNT_SID": "acme",
            "EXOTEL_API_KEY": "k",
            "EXOTEL_API_TOKEN": "t0123",
            "CALLBACK_TOKEN": TOK_A,
            "SINKS": "memory://a",
        },
        dotenv=False,
    )
    (account,) = s.all_accounts
    assert account.name == "default"
    assert (account.sid, account.api_key, account.api_token) == ("acme", "k", "t0123")
    assert account.callback_tokens == (TOK_A,)
    assert account.sinks == ("memory://a",)
    assert account.limit_name == "exotel:acme"
    assert s.token_accounts == ((TOK_A, "default", 0),)


def test_inline_json_accounts_with_env_references() -> None:
    s = Settings.from_env(
        {"EXOTEL_ACCOUNTS": _two(), "NORTH_TOKEN": "t_north_secret", "SINKS": "memory://global"},
        dotenv=False,
    )
    assert [a.name for a in s.all_accounts] == ["north", "south"]
    north, south = s.all_accounts
    assert north.api_token == "t_north_secret"
    assert north.url == "https://ccm-api.exotel.com"
    assert north.sinks == ("memory://global",)  # the global SINKS by default
    assert north.rate_limit == Rate(200, 60)
    assert north.default_country == "IN"
    assert south.url == "https://ccm-api.in.exotel.com"
    assert south.rate_limit == Rate(60, 60)
    assert south.sinks == ("memory://south",)
    assert south.default_country == "SG"
    assert s.sink_urls == ("memory://global", "memory://south")
    assert {a for _, a, _ in s.token_accounts} == {"north", "south"}
    assert "t_north_secret" in s.secrets() and "t_south_secret" in s.secrets()
    assert TOK_B in s.secrets()
    view = s.for_account("south")
    assert (view.exotel_account_sid, view.exotel_url) == ("acme_south", south.url)
    assert view.default_country == "SG" and view.sinks == ("memory://south",)


def test_single_set_stays_as_default_next_to_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "accounts.toml"
    path.write_text(
        '[east]\nsid = "acme_east"\napi_key = "k"\napi_token = "${EAST_TOKEN}"\n'
        f'callback_tokens = ["{TOK_B}"]\nsinks = "memory://e1 memory://e2"\n'
    )
    s = Settings.from_env(
        {
            "EXOTEL_ACCOUNTS": str(path),
            "EAST_TOKEN": "secret-east",
            "EXOTEL_ACCOUNT_SID": "acme",
            "EXOTEL_API_KEY": "k",
            "EXOTEL_API_TOKEN": "t",
            "CALLBACK_TOKEN": TOK_A,
        },
        dotenv=False,
    )
    assert [a.name for a in s.all_accounts] == ["default", "east"]
    assert s.account("east").sinks == ("memory://e1", "memory://e2")
    with pytest.raises(SettingsError, match="no account named 'west'; configured: default, east"):
        s.account("west")


@pytest.mark.parametrize(
    ("south", "message"),
    [
        ({"sid": None}, "account south: sid is missing"),
        ({"api_token": None}, "account south: api_token is missing"),
        ({"sid": "../x"}, "account south: sid must be"),
        ({"region": "eu"}, "account south: region must be 'sg' or 'in'"),
        ({"base_url": "ftp://x"}, "account south: base_url must look like"),
        ({"rate_limit": "fast"}, "account south: rate_limit: expected N/second"),
        ({"callback_tokens": []}, "account south: callback_tokens is missing"),
        ({"callback_tokens": ["short"]}, "account south: each callback token must be 16"),
        ({"callback_tokens": [TOK_A]}, "accounts north and south share a callback token"),
        ({"sid": "acme_north"}, "accounts north and south have the same sid"),
        ({"sinks": ["not a url"]}, "account south: sink 'not' is not a URL"),
        ({"default_country": "XX"}, "account south: default_country 'XX' is not"),
        ({"api_key": "${MISSING_KEY}"}, r"account south: api_key refers to \$\{MISSING_KEY\}"),
        ({"token": "x"}, "account south: unknown field 'token'"),
        ({"sinks": 3}, "account south: sinks must be a string or a list of strings"),
    ],
)
def test_bad_account_is_one_line_naming_the_account_and_field(
    south: dict[str, object], message: str
) -> None:
    import json

    accounts = json.loads(_two())
    accounts["south"].update(south)
    accounts["south"] = {k: v for k, v in accounts["south"].items() if v is not None}
    with pytest.raises(SettingsError, match=message) as err:
        Settings.from_env(
            {"EXOTEL_ACCOUNTS": json.dumps(accounts), "NORTH_TOKEN": "x"}, dotenv=False
        )
    assert str(err.value).startswith("EXOTEL_ACCOUNTS: ")
    assert "\n" not in str(err.value)
    assert "t_south_secret" not in str(err.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/nowhere/accounts.toml", "neither inline JSON/TOML nor a readable file"),
        ('{"north": ', "inline: bad JSON at line 1"),
        ("north = [", "inline: bad TOML"),
        ("[1, 2]", "bad TOML"),
        ('{"North": {}}', "account name 'North' must be"),
        ('{"north": 3}', "account north: expected a table"),
        ("{}", "names no account"),
    ],
)
def test_bad_exotel_accounts_value(value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({"EXOTEL_ACCOUNTS": value}, dotenv=False)


def test_file_account_default_clashes_with_the_single_set() -> None:
    accounts = '{"default": {"sid": "x", "api_key": "k", "api_token": "t", ' \
        f'"callback_tokens": "{TOK_B}"}}}}'  # fmt: skip
    with pytest.raises(SettingsError, match="account 'default' is also given by"):
        Settings.from_env({"EXOTEL_ACCOUNTS": accounts, "CALLBACK_TOKEN": TOK_A}, dotenv=False)
