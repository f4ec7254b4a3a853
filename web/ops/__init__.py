"""``/ops``: the operator console, server-rendered, with a JSON twin of every page.

Registered only when ``OPS_PASSWORD`` or ``OPS_USERS_FILE`` is set. Pages are
Jinja templates; htmx (vendored under ``static/``, no CDN, no build step)
refreshes parts of them in place. Every page at ``/ops/<x>`` has its JSON at
``/ops/api/<x>`` (docs/openapi.yaml).
"""

from __future__ import annotations

from web.ops.views import bp

__all__ = ["bp"]
