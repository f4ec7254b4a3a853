"""Who may post a callback: the URL token, compared in constant time."""

from __future__ import annotations

import hmac

from flask import Request

from worker.settings import Settings


class Guard:
    def __init__(self, settings: Settings) -> None:
        self.tokens = [t.encode() for t in settings.callback_tokens]

    def token_ok(self, token: str) -> bool:
        given = token.encode("utf-8", "surrogateescape")
        ok = False
        for expected in self.tokens:  # no early exit: every token is compared
            ok |= hmac.compare_digest(given, expected)
        return ok

    def check(self, request: Request, token: str) -> tuple[int, str] | None:
        """None when the request may proceed, else (status, message)."""
        if not self.token_ok(token):
            return 403, "forbidden"
        return None
