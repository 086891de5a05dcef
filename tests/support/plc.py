"""A PLC as the tests play it: a pymodbus TCP client and an asyncua client that go through the
station's handshake the way a PLC program does (docs/plc.md, "Worked example"), and the
station config with the plc section on."""

from __future__ import annotations

import asyncio
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymodbus.client import ModbusTcpClient

from inspectd.plc import modbus as mb
from inspectd.plc.modbus import registers_text, text_registers

from support.paths import PRODUCTS
from support.station import station_config, write_good_frames

CODES = {n: code for code, n in mb.ERROR_CODES.items()}
VERDICTS = {0: None, 1: "OK", 2: "NG", 3: "ERROR"}


def plc_station_config(
    tmp: Path,
    *,
    port: int | None = None,
    products_dir: Path = PRODUCTS,
    camera: dict[str, Any] | None = None,
    sections: dict[str, Any] | None = None,
    **plc: Any,
) -> Path:
    """A station triggered by the PLC (camera.trigger: plc) on a looping folder of good parts;
    ``plc`` is merged into the plc section (port 0 = any free port, read from the log),
    ``camera`` into the camera section, ``sections`` are more overrides for ``station_config``."""
    frames = write_good_frames(tmp / "frames")
    section: dict[str, Any] = {"products": ["button"], **plc}
    return station_config(
        tmp,
        port=port,
        products_dir=products_dir,
        camera={"path": str(frames), "loop": True, "trigger": "plc", **(camera or {})},
        plc=section,
        mqtt={"drain_timeout_s": 2} if port is not None else {"enabled": False},
        **(sections or {}),
    )


@dataclass
class ModbusResult:
    verdict: str | None
    code: str | None
    seq: int
    part_id: str
    score: float
    permille: int
    status: int
    seconds: float  # trigger written -> ResultValid seen


class ModbusPlc:
    """The handshake over Modbus TCP: coils 0/1, holding registers 0.. and 100.. (docs/plc.md)."""

    def __init__(self, port: int) -> None:
        self.client = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
        assert self.client.connect(), f"no Modbus server on port {port}"

    def close(self) -> None:
        self.client.close()

    def regs(self, address: int, count: int) -> list[int]:
        r = self.client.read_holding_registers(address, count=count)
        assert not r.isError(), r
        return r.registers

    def status(self) -> int:
        return self.regs(mb.HR_STATUS, 1)[0]

    def write_part_id(self, part_id: str) -> None:
        r = self.client.write_registers(mb.HR_PART_ID, text_registers(part_id))
        assert not r.isError(), r

    def start(self, part_id: str) -> float:
        """PartId, then Trigger := 1; the time it was set."""
        self.write_part_id(part_id)
        return self.trigger()

    def trigger(self) -> float:
        """Trigger := 1 (with the PartId registers as they are); the time it was set."""
        t0 = time.monotonic()
        assert not self.client.write_coil(mb.COIL_TRIGGER, True).isError()
        return t0

    def wait_result(self, t0: float, timeout: float = 10.0) -> ModbusResult:
        """ResultValid, the result, then Trigger := 0, ResultAck := 1 until ResultValid is 0,
        ResultAck := 0."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.regs(mb.HR_STATUS, mb.OUT_END - mb.OUT_START)
            if out[0] & 8:
                break
            assert time.monotonic() < deadline, f"no ResultValid in {timeout} s"
            time.sleep(0.001)
        seconds = time.monotonic() - t0
        result = self._result(out, seconds)
        self.client.write_coil(mb.COIL_TRIGGER, False)
        self.acknowledge()
        return result

    def acknowledge(self) -> None:
        self.client.write_coil(mb.COIL_RESULT_ACK, True)
        while self.status() & 8:
            time.sleep(0.001)
        self.client.write_coil(mb.COIL_RESULT_ACK, False)

    def inspect(self, part_id: str, timeout: float = 10.0) -> ModbusResult:
        return self.wait_result(self.start(part_id), timeout)

    @staticmethod
    def _result(out: list[int], seconds: float) -> ModbusResult:
        def at(address: int, n: int = 1) -> list[int]:
            return out[address - mb.OUT_START : address - mb.OUT_START + n]

        hi, lo = at(mb.HR_SEQ, 2)
        raw = b"".join(r.to_bytes(2, "big") for r in at(mb.HR_SCORE, 2))
        return ModbusResult(
            verdict=VERDICTS[at(mb.HR_VERDICT)[0]],
            code=CODES.get(at(mb.HR_ERROR_CODE)[0]),
            seq=hi << 16 | lo,
            part_id=registers_text(at(mb.HR_RESULT_PART_ID, mb.PART_ID_REGS)),
            score=struct.unpack(">f", raw)[0],
            permille=at(mb.HR_SCORE_PERMILLE)[0],
            status=out[0],
            seconds=seconds,
        )


async def opcua_station(client: Any, station: str = "cam1") -> tuple[Any, int]:
    """The station's object and the namespace index."""
    idx = await client.get_namespace_index("urn:inspectd:plc")
    return await client.nodes.objects.get_child(f"{idx}:{station}"), idx


def run(coro: Any) -> Any:
    return asyncio.run(coro)
