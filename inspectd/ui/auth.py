"""Who is asking: HTTP Basic for people, bearer tokens for wall displays and scripts.

Passwords are stored as scrypt hashes (``inspectd.passwords``, shared with the PLC's OPC UA
users), made by ``inspectd ui --hash-password``. Tokens
are compared by their sha256. All comparisons are constant-time.

Roles: ``viewer`` sees the page and its live updates; ``operator`` also reviews parts and sends
commands. With no credentials configured (allowed on loopback only) everyone is an operator.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    BaseUser,
)
from starlette.requests import HTTPConnection

from inspectd.passwords import check_password, hash_password
from inspectd.ui.config import AccessConfig, credential_path

__all__ = [
    "Credentials",
    "TOKEN_COOKIE",
    "UiAuthBackend",
    "UiUser",
    "check_password",
    "hash_password",
]

TOKEN_COOKIE = "inspectd_ui_token"


def valid_hash(stored: str) -> bool:
    parts = stored.strip().split("$")
    return len(parts) == 6 and parts[0] == "scrypt"


@dataclass(frozen=True)
class UiUser(BaseUser):
    name: str
    role: str

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.name


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


EMPTY_SHA256 = _digest("")


class Credentials:
    """The configured users (name -> (hash, role)) and tokens (sha256 -> (name, role)), with
    secret files and systemd credentials read once at start-up."""

    def __init__(self, access: AccessConfig) -> None:
        self.users: dict[str, tuple[str, str]] = {}
        self.tokens: dict[str, tuple[str, str]] = {}
        for u in access.users:
            stored = u.password_hash
            if u.password_hash_file is not None:
                stored = _read(u.password_hash_file)
            elif u.password_hash_credential is not None:
                stored = _read(credential_path(u.password_hash_credential) or Path("/nonexistent"))
            assert stored is not None
            if not valid_hash(stored):
                raise ValueError(
                    f"access.users {u.name}: the password hash is not one "
                    "`inspectd ui --hash-password` makes (scrypt$…)"
                )
            self.users[u.name] = (stored, u.role)
        for t in access.tokens:
            digest = t.token_sha256
            if digest is None:
                path = (
                    t.token_file
                    or credential_path(t.token_credential or "")
                    or Path("/nonexistent")
                )
                digest = _digest(_read(path))
            if digest == EMPTY_SHA256:  # an empty file would let an empty bearer in
                raise ValueError(f"access.tokens {t.name}: the token is empty")
            self.tokens[digest] = (t.name, t.role)
        self.open = not self.users and not self.tokens  # loopback without credentials

    def by_password(self, name: str, password: str) -> UiUser | None:
        found = self.users.get(name)
        if found is None:
            check_password(password, hash_password("x", b"0" * 16))  # same time as a real check
            return None
        return UiUser(name, found[1]) if check_password(password, found[0]) else None

    def by_token(self, token: str) -> UiUser | None:
        if not token:
            return None
        digest = _digest(token)
        for known, (name, role) in self.tokens.items():
            if hmac.compare_digest(known, digest):
                return UiUser(name, role)
        return None


class UiAuthBackend(AuthenticationBackend):
    """Starlette's authentication middleware calls this for every request and event stream."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        if self.credentials.open:
            return AuthCredentials(["viewer", "operator"]), UiUser("local", "operator")
        user = self._user(conn)
        if user is None:
            return None
        scopes = ["viewer", "operator"] if user.role == "operator" else ["viewer"]
        return AuthCredentials(scopes), user

    def _user(self, conn: HTTPConnection) -> UiUser | None:
        header = conn.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                name, _, password = base64.b64decode(value).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError) as exc:
                raise AuthenticationError("malformed Basic credentials") from exc
            return self.credentials.by_password(name, password)
        if scheme.lower() == "bearer":
            return self.credentials.by_token(value.strip())
        token = conn.query_params.get("token") or conn.cookies.get(TOKEN_COOKIE)
        return self.credentials.by_token(token) if token else None


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_from_stdin_or_prompt() -> str:
    """For `inspectd ui --hash-password`: asks twice on a terminal, reads one line otherwise."""
    import getpass
    import sys

    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if first != getpass.getpass("again: "):
            raise ValueError("the two passwords differ")
    else:
        first = sys.stdin.readline().rstrip("\n")
    if len(first) < 8:
        raise ValueError("use at least 8 characters")
    return hash_password(first)
