"""What ``exolegs sinks list`` and ``exolegs sinks check`` print, as plain data.

Every string returned here has passwords and secrets masked, so the CLI can
print it as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from worker.errors import ExolegsError, SettingsError
from worker.redact import scrub
from worker.sinks import registry

if TYPE_CHECKING:
    from redis import Redis

    from worker.settings import Settings
    from worker.sinks.base import Sink


def _class_path(cls: type[Sink]) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def list_sinks() -> list[dict[str, str]]:
    """Every registered sink: ``name``, ``package``, ``class``, ``url_help``, ``error``, ``note``.

    ``package`` is the distribution that provides it (``exolegs`` for the
    built-ins). ``error`` is empty for a sink that loads, else why it does not
    (the other sinks still work: only the sinks a URL names are ever
    imported). ``note`` says when another package registers the same name.
    """
    points = registry.entry_point_map()
    clashes = registry.conflicts()
    rows: list[dict[str, str]] = []
    for name, found in registry.available().items():
        point = points.get(name)
        package = registry.package_of(point) if point is not None else "(several)"
        row = {"name": name, "package": package, "note": clashes.get(name, "") if point else ""}
        if isinstance(found, Exception):
            value = point.value if point is not None else ""
            row.update({"class": value, "url_help": "", "error": str(found)})
        else:
            row.update({"class": _class_path(found), "url_help": found.url_help, "error": ""})
        rows.append(row)
    return rows


def _describe(err: BaseException) -> str:
    if isinstance(err, ExolegsError):
        kind = "retryable" if err.retryable else "not retryable"
        return f"{err.message} [{kind}]"
    if isinstance(err, SettingsError):
        return str(err)
    return f"{type(err).__name__}: {err}"


def _name_of(url: str) -> str:
    try:
        named = dict(parse_qsl(urlsplit(url).query)).get("name")
    except ValueError:
        named = None
    return named or registry.scheme_of(url) or "?"


def check_sinks(settings: Settings, redis: Redis | None = None) -> list[tuple[str, bool, str]]:
    """Build every configured sink and run its ``check()``: ``(name, ok, message)`` rows.

    A sink whose check finds several problems (a missing scope, a missing
    field) gets one row for each, in the order found.
    A URL that does not build is reported under its ``?name=`` (else its
    scheme) and does not stop the others from being checked.
    """
    from worker.sinks.base import CheckFailed, SinkContext

    secrets = settings.secrets()

    def clean(text: str) -> str:
        return scrub(text, secrets)

    context = SinkContext(settings=settings, redis=redis)
    urls = list(settings.sinks)
    broken: dict[int, tuple[str, bool, str]] = {}
    try:
        sinks = list(registry.build_sinks(urls, context).values())
    except Exception:  # noqa: BLE001 - find and report the URLs that do not build
        for n, url in enumerate(urls):
            try:
                registry.build_sink(url, context).close()
            except Exception as err:  # noqa: BLE001 - every failure is a row
                broken[n] = (clean(_name_of(url)), False, clean(_describe(err)))
        good = [url for n, url in enumerate(urls) if n not in broken]
        sinks = list(registry.build_sinks(good, context).values())
    built = iter(sinks)
    results: list[tuple[str, bool, str]] = []
    for n in range(len(urls)):
        if n in broken:
            results.append(broken[n])
            continue
        sink = next(built)
        try:
            message = sink.check()
        except CheckFailed as failed:  # one row per problem, each saying what to change
            results.extend((clean(sink.name), False, clean(line)) for line in failed.problems)
        except Exception as err:  # noqa: BLE001 - every failure is a row
            results.append((clean(sink.name), False, clean(_describe(err))))
        else:
            results.append((clean(sink.name), True, clean(f"{sink.display_url}: {message}")))
        finally:
            sink.close()
    return results
