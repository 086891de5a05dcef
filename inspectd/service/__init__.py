"""The running station: ``station`` wires the components with explicit start and stop steps;
``health`` combines their reports and publishes them; ``metrics_http`` serves Prometheus
/metrics and /healthz; ``sd_notify`` speaks systemd's readiness and watchdog protocol. Signals
are handled by the command that runs a station (``inspectd.commands.run``)."""
