"""Local MQTT brokers on the loopback interface: for the tests and for ``inspectd demo``.

``inspectd demo`` starts one when nothing answers at the configured host, so a newcomer sees the
whole path; the test fixture uses the same code. mosquitto is preferred (MQTT 5 and 3.1.1). The
pure-Python amqtt 0.12.1 (extra ``demo``) is the fallback; it speaks MQTT 3.1.1 only and refuses an
MQTT 5 CONNECT ("Unsupported protocol version"), so clients must use ``LocalBroker.protocol``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

START_TIMEOUT_S = 10.0
STOP_GRACE_S = 3.0
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def broker_reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at host:port.

    A TCP connect does not prove that an MQTT broker is listening (it could be any server); it is
    good enough to decide whether the demo should start its own broker, and the MQTT client reports
    a non-MQTT peer when it connects.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary: PATH plus the sbin folders Debian installs it in."""
    folders = os.environ.get("PATH", "").split(os.pathsep) + ["/usr/sbin", "/usr/local/sbin"]
    return shutil.which("mosquitto", path=os.pathsep.join(f for f in folders if f))


def amqtt_available() -> bool:
    try:
        import amqtt.scripts.broker_script  # noqa: F401
    except ImportError:
        return False
    return True


class LocalBroker:
    """A broker process listening on 127.0.0.1:port, with its config and log in a temp folder.

    ``stop()``/``kill()`` end the process and keep the folder, so ``restart()`` can bring the
    broker back on the same port (outage tests); ``close()`` (or leaving the ``with`` block) also
    removes the folder.
    """

    def __init__(
        self, kind: str, port: int, argv: list[str], workdir: Path, log_path: Path
    ) -> None:
        self.kind = kind
        self.host = LOOPBACK
        self.port = port
        # amqtt refuses MQTT 5; mosquitto speaks both, and 5 is what the daemon uses by default
        self.protocol = "3.1.1" if kind == "amqtt" else "5"
        self.workdir = workdir
        self.log_path = log_path
        self._argv = argv
        self._process: subprocess.Popen[bytes] | None = None

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def start_mosquitto(cls, port: int | None = None, *, extra_conf: str = "") -> LocalBroker:
        binary = find_mosquitto()
        if binary is None:
            raise RuntimeError(
                "mosquitto is not installed (Debian/Ubuntu: apt-get install mosquitto)"
            )
        port = free_port() if port is None else port
        workdir = Path(tempfile.mkdtemp(prefix="inspectd-mosquitto-"))
        log_path = workdir / "mosquitto.log"
        lines = [
            f"listener {port} {LOOPBACK}",
            "allow_anonymous true",
            "persistence false",
            # Nagle off towards subscribers too, as a low-latency production broker should be
            # (docs/mqtt.md): otherwise a verdict can wait 40 ms for a delayed ACK
            "set_tcp_nodelay true",
            f"log_dest file {log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # Started as root, mosquitto 2 drops to the "mosquitto" user, which cannot write the
            # log in our private temp folder; stay root (this is a throwaway loopback broker).
            lines.insert(0, "user root")
        conf = workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n" + extra_conf + ("\n" if extra_conf else ""))
        broker = cls("mosquitto", port, [binary, "-c", str(conf)], workdir, log_path)
        broker._start_or_cleanup()
        return broker

    @classmethod
    def start_amqtt(cls, port: int | None = None) -> LocalBroker:
        """amqtt 0.12.1's broker (its ``amqtt`` console script) in a subprocess."""
        if not amqtt_available():
            raise RuntimeError("amqtt is not installed (pip install 'inspectd[demo]')")
        port = free_port() if port is None else port
        workdir = Path(tempfile.mkdtemp(prefix="inspectd-amqtt-"))
        log_path = workdir / "amqtt.log"
        # Only the anonymous-auth plugin: the default config's packet/event loggers and $SYS
        # plugin are noise here. The YAML is written by hand to keep PyYAML out of this path.
        conf = workdir / "amqtt.yaml"
        conf.write_text(
            "listeners:\n"
            "  default:\n"
            "    type: tcp\n"
            f"    bind: {LOOPBACK}:{port}\n"
            "plugins:\n"
            "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            "    allow_anonymous: true\n"
        )
        # amqtt.scripts.broker_script.main is what the `amqtt` console script runs; calling it
        # through this interpreter avoids depending on where the script was installed.
        code = (
            "import sys; from amqtt.scripts.broker_script import main; "
            "sys.argv[0] = 'amqtt'; sys.exit(main())"
        )
        argv = [sys.executable, "-c", code, "-c", str(conf)]
        broker = cls("amqtt", port, argv, workdir, log_path)
        broker._start_or_cleanup()
        return broker

    # -- process control ------------------------------------------------------------------------

    def _start_or_cleanup(self) -> None:
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.kind} on port {self.port} is already running")
        if broker_reachable(self.host, self.port, timeout=0.2):
            # otherwise the wait below would mistake the other server for ours
            raise RuntimeError(f"port {self.host}:{self.port} is already in use")
        out = open(self.workdir / f"{self.kind}.out", "ab")  # noqa: SIM115 - handed to the child
        try:
            self._process = subprocess.Popen(
                self._argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,  # a Ctrl-C in the terminal is for the parent only
            )
        finally:
            out.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                raise RuntimeError(
                    f"{self.kind} exited with status {code} while starting on port {self.port}; "
                    f"log tail:\n{self.log_tail()}"
                )
            if broker_reachable(self.host, self.port, timeout=0.2):
                return
            time.sleep(0.05)
        self._end(signal.SIGKILL)
        raise RuntimeError(
            f"{self.kind} did not accept connections on {self.host}:{self.port} within "
            f"{START_TIMEOUT_S:.0f} s; log tail:\n{self.log_tail()}"
        )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _end(self, sig: int) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_GRACE_S)

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after 3 s)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without closing its connections cleanly."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        """Stop if running, then start again on the same port with the same config."""
        self.stop()
        self._start()

    def close(self) -> None:
        """Stop and remove the temp folder."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the broker's log and of its stdout/stderr."""
        parts = []
        for path in (self.log_path, self.workdir / f"{self.kind}.out"):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            if text.strip():
                parts.append(f"--- {path.name}\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts) if parts else "(no log output)"

    def __enter__(self) -> LocalBroker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"LocalBroker({self.kind}, {self.host}:{self.port}, MQTT {self.protocol}, {state})"


def start_embedded_broker(port: int | None = None) -> LocalBroker:
    """A broker for ``inspectd demo``: mosquitto if installed, else amqtt, else a clear error."""
    if find_mosquitto() is not None:
        return LocalBroker.start_mosquitto(port)
    if amqtt_available():
        return LocalBroker.start_amqtt(port)
    raise RuntimeError(
        "no MQTT broker answers and none can be started here: install mosquitto "
        "(apt-get install mosquitto) or the pure-Python amqtt (pip install 'inspectd[demo]'), "
        "or point mqtt.host/port at a running broker"
    )
