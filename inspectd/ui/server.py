"""Serve the page with uvicorn (HTTPS when listen.tls_cert_file is given), as its own process
(``serve``) or from a thread of ``inspectd demo`` (``BackgroundUi``)."""

from __future__ import annotations

import socket
import sys
import threading
import time

from inspectd.ui.auth import Credentials
from inspectd.ui.config import UiConfig


def serve(cfg: UiConfig, credentials: Credentials) -> int:
    """Runs until SIGTERM or SIGINT; 1 when the port could not be bound."""
    import uvicorn

    from inspectd.logs import configure_logging
    from inspectd.ui.app import build_app

    configure_logging("info", "json" if not sys.stderr.isatty() else "console")
    app = build_app(cfg, credentials)
    tls = cfg.listen.tls_cert_file is not None
    config = uvicorn.Config(
        app,
        host=cfg.listen.host,
        port=cfg.listen.port,
        log_config=None,
        access_log=False,
        ssl_certfile=str(cfg.listen.tls_cert_file) if tls else None,
        ssl_keyfile=str(cfg.listen.tls_key_file) if tls else None,
        timeout_graceful_shutdown=1,  # open event streams never end by themselves
        lifespan="on",
        proxy_headers=True,
    )
    server = uvicorn.Server(config)
    host = f"[{cfg.listen.host}]" if ":" in cfg.listen.host else cfg.listen.host
    print(
        f"inspectd ui: http{'s' if tls else ''}://{host}:{cfg.listen.port}/ "
        f"(broker {cfg.mqtt.host}:{cfg.mqtt.port}, stations {', '.join(cfg.stations)})",
        flush=True,
    )
    server.run()
    return 0 if server.started else 1


def bind_loopback(preferred: int) -> socket.socket:
    """A socket bound on 127.0.0.1: ``preferred`` when free, else any free port. Bound here, not
    by uvicorn, so the address printed before serving is the one served (no race for the port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
    try:
        sock.bind(("127.0.0.1", preferred))
    except OSError:  # taken (a second demo, or `inspectd ui`): any free one
        sock.bind(("127.0.0.1", 0))
    return sock


class BackgroundUi:
    """The page served from a thread of another program (``inspectd demo``), which keeps its own
    logging and signal handling (uvicorn installs no signal handlers off the main thread)."""

    def __init__(self, cfg: UiConfig, credentials: Credentials, sock: socket.socket) -> None:
        import uvicorn

        from inspectd.ui.app import build_app

        self.app = build_app(cfg, credentials)
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}/"
        config = uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=1
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="inspectd-ui", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as exc:  # uvicorn's startup failures end in SystemExit
            self._error = exc

    def start(self, timeout: float = 10.0) -> None:
        """Serving when it returns; else RuntimeError, with uvicorn's reason where it gave one."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the web server did not start ({self._error!r})"
                    if self._error
                    else "the web server did not start"
                )
            time.sleep(0.02)

    def broker_connected(self, timeout: float) -> bool:
        """Whether the page's MQTT link is up within ``timeout`` (before the first part, so the
        page counts every verdict: they are not retained)."""
        deadline = time.monotonic() + timeout
        while not self.app.state.line.broker.get("connected"):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    @property
    def broker_error(self) -> str | None:
        return self.app.state.line.broker.get("error")

    def stop(self) -> None:
        loop = self.app.state.link.loop
        if loop is not None and not loop.is_closed():
            # end the open event streams first: uvicorn would wait for them (they never end by
            # themselves), then cancel them and log a traceback for each open page
            loop.call_soon_threadsafe(self.app.state.hub.close)
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.sock.close()
