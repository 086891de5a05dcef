"""The PLC servers' thread: one asyncio loop ("plc") running the OPC UA and the Modbus server
the config enables. asyncua and pymodbus are imported here only when their section is on, so a
station without them needs neither installed (the runtime stays lean)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

import structlog

from inspectd.config.plc import PlcConfig
from inspectd.plc.bits import BitHandshake
from inspectd.plc.link import PlcLink

log = structlog.get_logger(__name__)

START_TIMEOUT_S = 30.0


class PlcStartError(Exception):
    """A server that could not start (a port in use, a bad certificate): a start-up error."""


class PlcServers:
    def __init__(self, config: PlcConfig, link: PlcLink, *, station: str) -> None:
        self.config = config
        self.station = station
        self.link = link
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="plc", daemon=True)
        self._stops: list[Callable[[], Awaitable[Any]]] = []
        self.ports: dict[str, int] = {}
        self.bits: dict[str, BitHandshake] = {}

    def threads(self) -> dict[str, threading.Thread | None]:
        return {"plc": self._thread}

    def start(self) -> None:
        self._thread.start()
        future: Future[None] = asyncio.run_coroutine_threadsafe(self._start(), self.loop)
        try:
            future.result(START_TIMEOUT_S)
        except Exception as exc:
            self.stop()
            raise PlcStartError(str(exc) or type(exc).__name__) from exc

    async def _start(self) -> None:
        cfg = self.config
        if cfg.modbus.enabled:
            from inspectd.plc.modbus import MAX_PART_BYTES, serve_modbus

            bits = BitHandshake(self.link, "modbus", max_part_chars=MAX_PART_BYTES)
            try:
                server, port = await serve_modbus(bits, cfg.modbus.listen, cfg.modbus.port)
            except (OSError, RuntimeError) as exc:
                raise PlcStartError(
                    f"plc.modbus: cannot listen on {cfg.modbus.listen} port {cfg.modbus.port}: "
                    f"{exc}"
                ) from exc
            self.bits["modbus"], self.ports["modbus"] = bits, port
            self._stops.append(server.shutdown)
        if cfg.opcua.enabled:
            from inspectd.plc.opcua import serve_opcua

            bits = BitHandshake(self.link, "opcua", max_part_chars=128)
            try:
                server, port = await serve_opcua(bits, cfg.opcua, self.loop, self.station)
            except (OSError, ValueError) as exc:
                raise PlcStartError(f"plc.opcua: {exc}") from exc
            self.bits["opcua"], self.ports["opcua"] = bits, port
            self._stops.append(server.stop)

    def stats(self) -> dict[str, Any]:
        """health's ``plc``: where each server listens and the handshake's counters (triggers
        taken, answered late, refused by code, pending)."""
        cfg = self.config
        return {
            "opcua": {"listen": cfg.opcua.listen, "port": self.ports["opcua"]}
            if "opcua" in self.ports
            else None,
            "modbus": {"listen": cfg.modbus.listen, "port": self.ports["modbus"]}
            if "modbus" in self.ports
            else None,
            "handshake": self.link.handshake.stats(),
        }

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def stop_all() -> None:
            for stop in reversed(self._stops):
                try:
                    await stop()
                except Exception:
                    log.exception("plc.stop_failed")

        try:
            asyncio.run_coroutine_threadsafe(stop_all(), self.loop).result(10.0)
        except Exception:
            log.exception("plc.stop_failed")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5.0)
