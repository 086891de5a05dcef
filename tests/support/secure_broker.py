"""A private mosquitto with TLS and/or password authentication, for tests.

``make_pki`` makes a throwaway CA, server and client certificate with the ``openssl`` command line
(the ``cryptography`` package is not a dependency), ``write_password_file`` runs
``mosquitto_passwd`` and ``start_secure_mosquitto`` starts mosquitto through
``LocalBroker.start_mosquitto``, so the process handling (stop/kill/restart/close, ``with``) is
LocalBroker's.

How the config comes together: LocalBroker writes ``listener PORT 127.0.0.1`` and
``allow_anonymous true`` first and appends ``extra_conf`` at the end. With mosquitto 2's default
``per_listener_settings false``, the TLS options (cafile, certfile, keyfile, tls_version,
require_certificate) belong to the most recent ``listener`` line, which is LocalBroker's only one,
so appending them turns that listener into a TLS listener; ``allow_anonymous`` and
``password_file`` are global and the last ``allow_anonymous`` line wins, so an appended
``allow_anonymous false`` overrides LocalBroker's ``true``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from inspectd.mqtt.broker import LocalBroker, find_mosquitto

CERT_DAYS = 2

# A self-contained openssl config, so the result does not depend on the system's openssl.cnf.
# Python's ssl module (with VERIFY_X509_STRICT too, the default from Python 3.13) wants a CA with
# basicConstraints CA:TRUE + keyCertSign and leaf certificates with an authorityKeyIdentifier.
_OPENSSL_CNF = """\
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server and a client certificate it signed, and an unrelated CA."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path  # did not sign the server cert: for "bad certificate" tests


def find_openssl() -> str | None:
    return shutil.which("openssl") or shutil.which("openssl", path="/usr/bin")


def find_mosquitto_passwd() -> str | None:
    return shutil.which("mosquitto_passwd") or shutil.which("mosquitto_passwd", path="/usr/bin")


def missing_tools(*, need_passwd: bool = True) -> str | None:
    """Why the secure broker cannot be made here (for ``pytest.skip``), or None."""
    missing = []
    if find_mosquitto() is None:
        missing.append("mosquitto (apt-get install mosquitto)")
    if need_passwd and find_mosquitto_passwd() is None:
        missing.append("mosquitto_passwd (apt-get install mosquitto)")
    if find_openssl() is None:
        missing.append("openssl (apt-get install openssl)")
    return "not installed: " + ", ".join(missing) if missing else None


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed with status {result.returncode}:\n{result.stderr.strip()}"
        )


def make_pki(folder: Path) -> Pki:
    """Make the certificates in ``folder`` (EC prime256v1 keys, valid for 2 days).

    The server certificate is for ``IP:127.0.0.1`` and ``DNS:localhost``.
    """
    openssl = find_openssl()
    if openssl is None:
        raise RuntimeError("openssl is not installed (apt-get install openssl)")
    folder.mkdir(parents=True, exist_ok=True)
    cnf = folder / "openssl.cnf"
    cnf.write_text(_OPENSSL_CNF)
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def ca(name: str, subject: str) -> tuple[Path, Path]:
        cert, key = folder / f"{name}.crt", folder / f"{name}.key"
        _run(
            [
                openssl,
                "req",
                "-x509",
                "-new",
                *new_key,
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-sha256",
                "-days",
                str(CERT_DAYS),
                "-subj",
                subject,
                "-config",
                str(cnf),
                "-extensions",
                "ca",
            ]
        )
        return cert, key

    def leaf(
        name: str, subject: str, section: str, ca_cert: Path, ca_key: Path
    ) -> tuple[Path, Path]:
        cert, key, csr = folder / f"{name}.crt", folder / f"{name}.key", folder / f"{name}.csr"
        _run(
            [
                openssl,
                "req",
                "-new",
                *new_key,
                "-keyout",
                str(key),
                "-out",
                str(csr),
                "-subj",
                subject,
                "-config",
                str(cnf),
            ]
        )
        _run(
            [
                openssl,
                "x509",
                "-req",
                "-in",
                str(csr),
                "-CA",
                str(ca_cert),
                "-CAkey",
                str(ca_key),
                "-set_serial",
                str(secrets.randbits(63)),
                "-sha256",
                "-days",
                str(CERT_DAYS),
                "-extfile",
                str(cnf),
                "-extensions",
                section,
                "-out",
                str(cert),
            ]
        )
        csr.unlink()
        return cert, key

    ca_cert, ca_key = ca("ca", "/CN=inspectd test CA")
    other_ca_cert, _ = ca("other-ca", "/CN=inspectd unrelated test CA")
    server_cert, server_key = leaf("server", "/CN=localhost", "server", ca_cert, ca_key)
    client_cert, client_key = leaf("client", "/CN=inspectd-test-client", "client", ca_cert, ca_key)
    return Pki(
        ca_cert=ca_cert,
        server_cert=server_cert,
        server_key=server_key,
        client_cert=client_cert,
        client_key=client_key,
        other_ca_cert=other_ca_cert,
    )


def write_password_file(folder: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file in ``folder`` with these user -> password entries."""
    binary = find_mosquitto_passwd()
    if binary is None:
        raise RuntimeError("mosquitto_passwd is not installed (apt-get install mosquitto)")
    if not users:
        raise ValueError("users is empty: mosquitto_passwd cannot make an empty password file")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mosquitto.passwd"
    for i, (user, password) in enumerate(users.items()):
        # -c (create, overwriting) for the first user only; later calls add to the file
        _run([binary, *(["-c"] if i == 0 else []), "-b", str(path), user, password])
    path.chmod(0o600)  # newer mosquitto versions warn about (and will refuse) readable files
    return path


def secure_extra_conf(
    *, pki: Pki | None = None, password_file: Path | None = None, require_certificate: bool = False
) -> str:
    """The lines appended to LocalBroker's mosquitto.conf (see the module docstring)."""
    if require_certificate and pki is None:
        raise ValueError("require_certificate needs a pki (it is a TLS option)")
    lines = []
    if pki is not None:
        lines += [
            f"cafile {pki.ca_cert}",
            f"certfile {pki.server_cert}",
            f"keyfile {pki.server_key}",
            "tls_version tlsv1.2",  # the minimum: TLS 1.3 is offered too
            f"require_certificate {'true' if require_certificate else 'false'}",
        ]
    if password_file is not None:
        lines += ["allow_anonymous false", f"password_file {password_file}"]
    return "\n".join(lines)


def start_secure_mosquitto(
    folder: Path,
    *,
    pki: Pki | None = None,
    password_file: Path | None = None,
    require_certificate: bool = False,
) -> LocalBroker:
    """A private mosquitto on a free 127.0.0.1 port: TLS with ``pki``, passwords with
    ``password_file``, plain and anonymous with neither.

    The result is a LocalBroker (``with``, stop/kill/restart/close). Its generated config and log
    live in ``broker.workdir``, which ``close()`` removes; a copy of the config is written to
    ``folder/mosquitto.conf`` so that it survives for a look after a failed test.
    """
    extra = secure_extra_conf(
        pki=pki, password_file=password_file, require_certificate=require_certificate
    )
    broker = LocalBroker.start_mosquitto(extra_conf=extra)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(broker.workdir / "mosquitto.conf", folder / "mosquitto.conf")
    except BaseException:
        broker.close()
        raise
    return broker


def start_acl_mosquitto(acl_file: Path, rules: str) -> LocalBroker:
    """A private anonymous mosquitto whose ACL (``acl_file``) holds ``rules``, e.g.
    ``topic readwrite #`` and ``topic deny a/b``. To an MQTT 5 client it answers a PUBLISH the
    ACL denies with PUBACK 0x87 (Not authorized) and keeps the connection."""
    acl_file.write_text(rules)
    return LocalBroker.start_mosquitto(extra_conf=f"acl_file {acl_file}")


def set_acl(broker: LocalBroker, acl_file: Path, rules: str) -> None:
    """Rewrite the ACL and have mosquitto reload it (SIGHUP); connections stay up."""
    assert broker.pid is not None and broker.running, broker
    acl_file.write_text(rules)
    os.kill(broker.pid, signal.SIGHUP)
