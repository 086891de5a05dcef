"""Serve the page with uvicorn (HTTPS when listen.tls_cert_file is given)."""

from __future__ import annotations

import sys

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
        app, host=cfg.listen.host, port=cfg.listen.port, log_config=None, access_log=False,
        ssl_certfile=str(cfg.listen.tls_cert_file) if tls else None,
        ssl_keyfile=str(cfg.listen.tls_key_file) if tls else None,
        timeout_graceful_shutdown=1,  # open event streams never end by themselves
        lifespan="on", proxy_headers=True,
    )  # fmt: skip
    server = uvicorn.Server(config)
    host = f"[{cfg.listen.host}]" if ":" in cfg.listen.host else cfg.listen.host
    print(f"inspectd ui: http{'s' if tls else ''}://{host}:{cfg.listen.port}/ "
          f"(broker {cfg.mqtt.host}:{cfg.mqtt.port}, stations {', '.join(cfg.stations)})",
          flush=True)  # fmt: skip
    server.run()
    return 0 if server.started else 1
