"""Lua scripts queued on a pipeline without an extra round trip.

redis-py sends ``SCRIPT EXISTS`` before every pipeline that holds an
``EVALSHA`` (``Pipeline.load_scripts``), one more round trip each time. On a
pipeline we send the script's text with ``EVAL`` instead: Redis caches the
compiled script by its SHA1 all the same, and a Redis that lost its script
cache (a restart, a failover) can never answer ``NOSCRIPT`` halfway through
a ``MULTI``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.client import Pipeline
    from redis.commands.core import Script


def queue(pipe: Pipeline, script: Script | str, keys: Sequence[str], args: Sequence[Any]) -> None:
    """Queue one run of ``script`` (a registered Script or its source) on ``pipe``."""
    text = script if isinstance(script, str) else script.script
    pipe.eval(text, len(keys), *keys, *args)  # type: ignore[arg-type]
