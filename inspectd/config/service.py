"""The ``service`` and ``metrics`` sections: running under systemd (readiness, status, watchdog)
and the HTTP endpoints (/metrics, /healthz). One module for both: /healthz and the watchdog
rest on the same stall check (``service.stall_s``)."""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator

from inspectd.config.base import StrictModel


class ServiceConfig(StrictModel):
    """Running under systemd: readiness, STATUS= lines and the watchdog (sd_notify), and what
    counts as a stalled pipeline (for the watchdog and /healthz)."""

    stall_s: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="A pipeline thread (capture, infer, publish) that holds work and makes no "
        "progress for this many seconds is stalled: systemd watchdog pings stop "
        "(WatchdogSec= then restarts the service) and /healthz answers 503. Idle "
        "threads (no frame, no trigger request) are never stalled; a grab gets its "
        "own timeout on top. Must exceed the longest batch inference.",
    )
    status_interval_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="Seconds between STATUS= updates (the line systemctl status shows).",
    )


class MetricsConfig(StrictModel):
    """Prometheus metrics (/metrics) and liveness (/healthz) over HTTP."""

    enabled: bool = Field(False, description="Serve /metrics and /healthz over HTTP.")
    listen: str = Field(
        "127.0.0.1",
        description="IP address to bind: 127.0.0.1 or ::1 = this machine only, 0.0.0.0 or :: = "
        "every interface.",
    )
    port: int = Field(
        9108,
        ge=0,
        le=65535,
        description="TCP port; 0 = any free port (logged as metrics.listening and written to "
        "health.json). One port per station.",
    )

    @field_validator("listen")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value.strip("[]")))
        except ValueError:
            raise ValueError("expected an IP address, e.g. 127.0.0.1, ::1 or 0.0.0.0") from None
