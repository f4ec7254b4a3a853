"""The ops console's users: ``OPS_PASSWORD`` (user ``ops``) or a file of hashed passwords.

The users file has one ``name:hash`` per line, the hash made by
:func:`werkzeug.security.generate_password_hash` (``scrypt:`` or ``pbkdf2:``),
so the file never holds a password. Blank lines and ``#`` comments are
skipped. Make a line with::

    python -c 'from werkzeug.security import generate_password_hash as g; print("ana:" + g("…"))'
"""

from __future__ import annotations

import hmac
import re
from pathlib import Path

from werkzeug.security import check_password_hash

DEFAULT_USER = "ops"
_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
_HASH_METHODS = ("scrypt:", "pbkdf2:")


class UsersFileError(ValueError):
    """A malformed users file; the message names the line, never a hash."""


def load_users(path: Path) -> dict[str, str]:
    """``{name: password hash}`` from a users file."""
    users: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError as err:
        raise UsersFileError(f"cannot read {path}: {err.strerror}") from None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, hashed = line.partition(":")
        if not sep or not _NAME.fullmatch(name):
            raise UsersFileError(f"line {number}: expected name:hash")
        if not hashed.startswith(_HASH_METHODS):
            raise UsersFileError(
                f"line {number}: the password of {name!r} is not a werkzeug hash "
                "(scrypt:… or pbkdf2:…); passwords are never stored in clear"
            )
        users[name] = hashed
    if not users:
        raise UsersFileError(f"{path} lists no users")
    return users


def verify(
    user: str, password: str, *, ops_password: str | None, users_file: Path | None
) -> str | None:
    """The user's name when the credentials are right, else None.

    A name in the users file is checked against its hash; ``ops`` against
    ``OPS_PASSWORD`` when that is set too.
    """
    if users_file is not None:
        users = load_users(users_file)  # re-read: a removed user is out at their next login
        hashed = users.get(user)
        if hashed is not None:
            return user if check_password_hash(hashed, password) else None
        if ops_password is None:
            # Spend the time a real check would, so a wrong name is not faster.
            check_password_hash(next(iter(users.values())), password)
            return None
    if ops_password is None:
        return None
    name_ok = hmac.compare_digest(user.encode(), DEFAULT_USER.encode())
    password_ok = hmac.compare_digest(password.encode(), ops_password.encode())
    return DEFAULT_USER if name_ok and password_ok else None


def dev_password(var: Path) -> str:
    """A stable console password for this checkout (``exolegs dev``), kept in ``var/``."""
    path = var / "dev-ops-password"
    if path.is_file():
        return path.read_text().strip()
    import secrets

    var.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(12)
    path.write_text(password + "\n")
    path.chmod(0o600)
    return password


def dev_banner(base_url: str, password: str | None) -> str:
    """The console's line in ``exolegs dev``'s banner (the password only if dev made it)."""
    shown = f"user {DEFAULT_USER}, password {password}" if password else "your OPS_* credential"
    return f"Ops console: {base_url}/ops  ({shown})"
