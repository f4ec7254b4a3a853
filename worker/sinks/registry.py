"""Find sinks through the ``exolegs.sinks`` entry points and build them from URLs.

Only the entry point a URL names is imported, so a broken third-party plugin
never stops the sinks that do work.

Names are resolved safely: a built-in sink (one exolegs itself registers)
always wins over a plugin that registers the same name, since the sink gets
the URL with its secrets; and a name two plugins both register is refused
when SINKS uses it, with one line naming both packages.
"""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from worker.errors import SettingsError
from worker.redact import mask_url
from worker.sinks.base import Sink, SinkContext

if TYPE_CHECKING:
    from redis import Redis

    from worker.settings import Settings

log = logging.getLogger("exolegs.sinks")

GROUP = "exolegs.sinks"
#: The distribution that ships the built-in sinks.
BUILTIN_PACKAGE = "exolegs"


def package_of(point: EntryPoint) -> str:
    """The distribution that registers an entry point (its top module when unknown)."""
    dist = getattr(point, "dist", None)
    name = getattr(dist, "name", None) if dist is not None else None
    return str(name) if name else point.value.split(":", 1)[0].split(".", 1)[0]


def _builtin(point: EntryPoint) -> bool:
    return package_of(point) == BUILTIN_PACKAGE or point.value.startswith("worker.sinks.")


def _by_name() -> dict[str, list[EntryPoint]]:
    found: dict[str, list[EntryPoint]] = {}
    for point in entry_points(group=GROUP):
        same = found.setdefault(point.name, [])
        if not any(p.value == point.value and package_of(p) == package_of(point) for p in same):
            same.append(point)  # one package seen twice on sys.path is not a conflict
    return found


def entry_point_map() -> dict[str, EntryPoint]:
    """The entry point each usable name resolves to: the built-in, else the only plugin."""
    chosen: dict[str, EntryPoint] = {}
    for name, points in _by_name().items():
        builtin = [p for p in points if _builtin(p)]
        if builtin:
            chosen[name] = builtin[0]
        elif len(points) == 1:
            chosen[name] = points[0]
    return chosen


def conflicts() -> dict[str, str]:
    """Names registered more than once, and what happens to them, in one line each."""
    out: dict[str, str] = {}
    for name, points in _by_name().items():
        if len(points) < 2:
            continue
        packages = ", ".join(sorted(package_of(p) for p in points if not _builtin(p)))
        if any(_builtin(p) for p in points):
            out[name] = f"the built-in sink {name} is used; {packages} also registers it (ignored)"
        else:
            out[name] = (
                f"sink name {name!r} is registered by several packages ({packages}); "
                "uninstall all but one of them"
            )
    return out


def load(name: str) -> type[Sink]:
    eps = entry_point_map()
    if name not in eps:
        clash = conflicts().get(name)
        if clash:
            raise SettingsError("SINKS", clash)
        known = ", ".join(sorted(eps))
        raise SettingsError("SINKS", f"no sink is registered for {name!r}; installed: {known}")
    ep = eps[name]
    try:
        cls = ep.load()
    except Exception as err:
        raise SettingsError("SINKS", f"sink {name} ({ep.value}) failed to import: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, Sink)):
        raise SettingsError("SINKS", f"entry point {name} ({ep.value}) is not a Sink subclass")
    return cls


def available() -> dict[str, type[Sink] | Exception]:
    """Every registered sink, or the error that stops it loading."""
    found: dict[str, type[Sink] | Exception] = {}
    for name in sorted({*entry_point_map(), *conflicts()}):
        try:
            found[name] = load(name)
        except SettingsError as err:
            found[name] = err
    return found


def scheme_of(url: str) -> str:
    """``webhook+https://h/p`` -> ``webhook``; ``jsonl:///x`` -> ``jsonl``."""
    return urlsplit(url).scheme.split("+", 1)[0].lower()


def build_sink(url: str, context: SinkContext) -> Sink:
    scheme = scheme_of(url)
    cls = load(scheme)
    clash = conflicts().get(scheme)
    if clash:  # load() refused the ambiguous names: this is a plugin shadowing a built-in
        log.warning("SINKS: %s", clash)
    try:
        return cls(url, context)
    except SettingsError:
        raise
    except Exception as err:
        raise SettingsError("SINKS", f"{mask_url(url)}: {err}") from err


def build_sinks(urls: tuple[str, ...] | list[str], context: SinkContext) -> dict[str, Sink]:
    """All configured sinks by unique name (a repeated name gets ``-2``, ``-3``...).

    Give a sink ``?name=`` in its URL to keep its name (and so its delivery
    ledger) stable when the list of sinks is reordered.
    """
    sinks: dict[str, Sink] = {}
    for url in urls:
        _add(sinks, build_sink(url, context))
    return sinks


def _add(sinks: dict[str, Sink], sink: Sink) -> None:
    base, n = sink.name, 2
    while sink.name in sinks:
        sink.name = f"{base}-{n}"
        n += 1
    sinks[sink.name] = sink


def build_account_sinks(
    settings: Settings, redis: Redis | None = None
) -> tuple[dict[str, Sink], dict[str, tuple[str, ...]]]:
    """Every sink some account uses, built once per URL, and each account's sink names.

    A URL several accounts list is one sink, with one name, one rate limit and
    one circuit. The global SINKS come first, so they keep the names they have
    with a single account; a sink only one account lists is built with that
    account's settings (its DEFAULT_COUNTRY).
    """
    sinks: dict[str, Sink] = {}
    by_url: dict[str, Sink] = {}
    by_account: dict[str, tuple[str, ...]] = {}
    accounts = settings.all_accounts
    shared = set(settings.sinks)
    for url in settings.sinks:
        if any(url in a.sinks for a in accounts) and url not in by_url:
            by_url[url] = build_sink(url, SinkContext(settings, redis))
            _add(sinks, by_url[url])
    for account in accounts:
        for url in account.sinks:
            if url not in by_url:
                owners = [a for a in accounts if url in a.sinks]
                view = settings.for_account(account) if len(owners) == 1 else settings
                by_url[url] = build_sink(
                    url, SinkContext(view if url not in shared else settings, redis)
                )
                _add(sinks, by_url[url])
        by_account[account.name] = tuple(dict.fromkeys(by_url[u].name for u in account.sinks))
    return sinks, by_account
