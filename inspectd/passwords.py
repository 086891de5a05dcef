"""Password hashes as stored in the station's and the page's password files:
``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>`` (the standard library's scrypt, no dependency),
as ``inspectd ui --hash-password`` prints them. Checks are constant-time.

The page's users (inspectd/ui/auth.py) and the PLC's OPC UA users (inspectd/plc/opcua.py)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # 16 MiB a check: slow to guess, fine to log in


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, dklen=32, **_SCRYPT)
    b64 = base64.b64encode
    params = f"{_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}"
    return f"scrypt${params}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.strip().split("$")
        if kind != "scrypt":
            return False
        want = base64.b64decode(digest, validate=True)
        got = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.b64decode(salt, validate=True),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(want),
            maxmem=2**26,
        )
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(got, want)
