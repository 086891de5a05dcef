"""Logging in to the broker, one way for the daemon and the page: user name, password (given or
read from its file) and TLS. Both configs (``mqtt`` of the station, ``mqtt`` of the page) give
the same fields; the rules are here once: a password file's first line is the password, and an
empty or unreadable one is an error that names it (the page used to log in with an empty
password then); TLS files that cannot be loaded are an error that names them (ssl's do not)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paho.mqtt.client as mqtt


class LoginError(ValueError):
    """A password or TLS file that cannot be used; the message names the setting and file."""


class TlsFiles(Protocol):
    @property
    def ca_file(self) -> Path: ...
    @property
    def cert_file(self) -> Path | None: ...
    @property
    def key_file(self) -> Path | None: ...


@dataclass(frozen=True, slots=True)
class Credentials:
    """How to log in: username/password and TLS (all optional)."""

    username: str | None = None
    password: str | None = None
    ca_file: str | None = None  # TLS on when given
    cert_file: str | None = None  # client certificate, with key_file
    key_file: str | None = None


def read_password(path: Path) -> str:
    """The first line of ``path``."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LoginError(
            f"mqtt.password_file {path}: cannot read a password from it ({exc})"
        ) from exc
    if not lines:
        raise LoginError(f"mqtt.password_file {path}: cannot read a password from it (empty file)")
    return lines[0]


def credentials(
    username: str | None,
    *,
    password: str | None = None,
    password_file: Path | None = None,
    tls: TlsFiles | None = None,
) -> Credentials:
    """From a config's fields; reads the password file (``LoginError`` if it cannot)."""
    if password_file is not None:
        password = read_password(password_file)
    return Credentials(
        username=username,
        password=password,
        ca_file=str(tls.ca_file) if tls else None,
        cert_file=str(tls.cert_file) if tls and tls.cert_file else None,
        key_file=str(tls.key_file) if tls and tls.key_file else None,
    )


def apply(client: mqtt.Client, c: Credentials) -> None:
    """Set ``client``'s login and TLS; ``LoginError`` for TLS files that cannot be loaded."""
    if c.username is not None:
        client.username_pw_set(c.username, c.password)
    if c.ca_file is None:
        return
    what = f"mqtt.tls.ca_file {c.ca_file}"  # ssl's errors do not name the file
    try:
        context = ssl.create_default_context(cafile=c.ca_file)
        if c.cert_file is not None:
            what = f"mqtt.tls.cert_file {c.cert_file} / key_file {c.key_file}"
            context.load_cert_chain(c.cert_file, c.key_file)
    except (OSError, ssl.SSLError) as exc:  # unreadable or not PEM: a config problem
        raise LoginError(f"{what}: {exc}") from exc
    client.tls_set_context(context)
