"""The Modbus TCP server (pymodbus): the bit handshake (``inspectd.plc.bits``) in coils, the part
id, the result and the station's state in holding registers. The register map is ``COILS``,
``DISCRETE`` and the ``HR_*`` addresses below; docs/plc.md has it as a table a PLC programmer
types in. Addresses are the protocol's, from 0 (holding register 0 is 40001 in 1-based tools).

pymodbus 3.16 keeps its own register memory (``SimDevice``); the station's registers are computed
from the handshake when read, so the server is given a small context of our own instead
(``StationRegisters``: ``device_ids``, ``async_getValues``, ``async_setValues``, what its request
handlers call). Reads and writes outside the map, and writes to what the station owns, are
answered with Modbus exception 2 (illegal data address) and change nothing.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimData, SimDevice

from inspectd.contract.verdict import Verdict
from inspectd.plc.bits import BitHandshake
from inspectd.plc.handshake import CODES

log = structlog.get_logger(__name__)

# Coils (FC 1, 5, 15): written by the PLC.
COIL_TRIGGER = 0
COIL_RESULT_ACK = 1
COILS = 2
# Discrete inputs (FC 2): the station's handshake bits.
DI_READY, DI_BUSY, DI_TRIGGER_ACK, DI_RESULT_VALID = 0, 1, 2, 3
DISCRETE = 4
# Holding registers (FC 3, 6, 16) the PLC writes.
HR_PART_ID = 0  # 32 registers: UTF-8, two bytes a register, high byte first, NUL padded
PART_ID_REGS = 32
HR_SELECT_PRODUCT = 40  # product number to switch to; the station sets it back to 0
# Holding registers the station writes (read-only for the PLC).
HR_STATUS = (
    100  # bit 0 Ready, 1 Busy, 2 TriggerAck, 3 ResultValid, 4 Trigger, 5 ResultAck, 6 degraded
)
HR_VERDICT = 101  # 0 none, 1 OK, 2 NG, 3 ERROR
HR_ERROR_CODE = 102  # 0 none, else ERROR_CODES[code]
HR_SEQ = 103  # uint32, 2 registers, high word first
HR_SCORE_PERMILLE = 105  # score / threshold * 1000, 0..65535 (1000 = at the threshold)
HR_SCORE = 106  # float32, 2 registers, high word first; NaN without a score
HR_THRESHOLD = 108  # float32
HR_PRODUCT = 110  # the running product's number (plc.products), 0 = not listed
HR_CHANGEOVER = 111  # 0 ready, 1 switching, 2 refused
HR_CHANGEOVER_CODE = 112  # the refusal's error code
HR_HEALTH = 113  # 0 ok, 1 degraded
HR_RESULT_COUNT = 114  # results shown so far, modulo 65536
HR_COUNTS = 116  # OK, NG, ERROR since start: uint32 each (6 registers)
HR_LAST_HOUR = 122  # OK, NG, ERROR in the last hour: uint32 each (6 registers)
HR_RESULT_PART_ID = 130  # 32 registers: the part id of the result shown
OUT_START, OUT_END = HR_STATUS, HR_RESULT_PART_ID + PART_ID_REGS

VERDICTS = {Verdict.OK: 1, Verdict.NG: 2, Verdict.ERROR: 3}
ERROR_CODES = {code: i + 1 for i, code in enumerate(CODES)}
CHANGEOVER = {"ready": 0, "switching": 1, "refused": 2}
MAX_PART_BYTES = 2 * PART_ID_REGS


def text_registers(text: str) -> list[int]:
    data = text.encode("utf-8", "surrogateescape")[:MAX_PART_BYTES].ljust(MAX_PART_BYTES, b"\0")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, MAX_PART_BYTES, 2)]


def registers_text(registers: Sequence[int]) -> str:
    """The part id in registers; bytes that are not UTF-8 become lone surrogates, which the
    handshake refuses (invalid_part_id) instead of guessing."""
    data = b"".join(r.to_bytes(2, "big") for r in registers).rstrip(b"\0")
    return data.decode("utf-8", "surrogateescape")


def _u32(value: int) -> list[int]:
    value = max(0, min(int(value), 0xFFFFFFFF))
    return [value >> 16, value & 0xFFFF]


def _f32(value: float | None) -> list[int]:
    raw = struct.pack(">f", math.nan if value is None else value)
    return [int.from_bytes(raw[:2], "big"), int.from_bytes(raw[2:], "big")]


class StationRegisters:
    """The register map over one BitHandshake (see the module docstring)."""

    def __init__(self, bits: BitHandshake) -> None:
        self.bits = bits
        self.part_regs = [0] * PART_ID_REGS
        self.select = 0
        bits.link.listeners.append(self._changeover_done)

    def _changeover_done(self) -> None:
        if self.bits.link.state().changeover != "switching":
            self.select = 0

    def device_ids(self) -> list[int]:
        return [0]  # every unit id answers

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        if func_code in (1, 5, 15):
            if address < 0 or address + count > COILS:
                return ExcCodes.ILLEGAL_ADDRESS
            return [self.bits.trigger, self.bits.ack][address : address + count]
        if func_code == 2:
            if address < 0 or address + count > DISCRETE:
                return ExcCodes.ILLEGAL_ADDRESS
            return self._discrete()[address : address + count]
        if func_code in (3, 6, 16, 23):
            if 0 <= address and address + count <= PART_ID_REGS:
                return self.part_regs[address : address + count]
            if address == HR_SELECT_PRODUCT and count == 1:
                return [self.select]
            if OUT_START <= address and address + count <= OUT_END:
                out = self._outputs()
                return out[address - OUT_START : address - OUT_START + count]
        return ExcCodes.ILLEGAL_ADDRESS

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[Any]
    ) -> ExcCodes | None:
        end = address + len(values)
        if func_code in (5, 15):
            if address < 0 or end > COILS:
                return ExcCodes.ILLEGAL_ADDRESS
            for a, v in zip(range(address, end), values, strict=True):
                (self.bits.write_trigger if a == COIL_TRIGGER else self.bits.write_ack)(bool(v))
            return None
        if func_code in (6, 16, 23):
            if 0 <= address and end <= PART_ID_REGS:
                self.part_regs[address:end] = [int(v) & 0xFFFF for v in values]
                self.bits.write_part_id(registers_text(self.part_regs))
                return None
            if address == HR_SELECT_PRODUCT and len(values) == 1:
                return self._select(int(values[0]))
        return ExcCodes.ILLEGAL_ADDRESS

    def _select(self, number: int) -> ExcCodes | None:
        if number == 0:
            return None
        link = self.bits.link
        name = link.name_of(number)
        self.select = number
        if name is None:
            link.set_changeover("refused", "unknown_product", f"no product number {number}")
            self.select = 0
            return None
        if link.select(name) is not None:  # refused at once; the changeover registers say why
            self.select = 0
        return None

    def _discrete(self) -> list[bool]:
        b = self.bits.snapshot()
        return [self.bits.link.state().ready, b.busy, b.trigger_ack, b.result_valid]

    def _outputs(self) -> list[int]:
        b, state = self.bits.snapshot(), self.bits.link.state()
        shown = b.shown
        status = (
            int(state.ready)
            | b.busy << 1
            | b.trigger_ack << 2
            | b.result_valid << 3
            | b.trigger << 4
            | b.ack << 5
            | (state.health != "ok") << 6
        )
        score = shown.score if shown is not None else None
        threshold = shown.threshold if shown is not None else None
        permille = 0
        if score is not None and threshold:
            permille = max(0, min(65535, round(1000.0 * score / threshold)))
        out = [0] * (OUT_END - OUT_START)

        def put(address: int, values: list[int]) -> None:
            out[address - OUT_START : address - OUT_START + len(values)] = values

        put(HR_STATUS, [status])
        put(HR_VERDICT, [VERDICTS[shown.verdict] if shown is not None else 0])
        put(HR_ERROR_CODE, [ERROR_CODES.get(shown.code or "", 0) if shown is not None else 0])
        put(HR_SEQ, _u32(shown.seq if shown is not None else 0))
        put(HR_SCORE_PERMILLE, [permille])
        put(HR_SCORE, _f32(score))
        put(HR_THRESHOLD, _f32(threshold))
        put(HR_PRODUCT, [state.product_number])
        put(HR_CHANGEOVER, [CHANGEOVER[state.changeover]])
        put(HR_CHANGEOVER_CODE, [ERROR_CODES.get(state.changeover_code or "", 0)])
        put(HR_HEALTH, [int(state.health != "ok")])
        put(HR_RESULT_COUNT, [b.answered & 0xFFFF])
        for i, key in enumerate(("OK", "NG", "ERROR")):
            put(HR_COUNTS + 2 * i, _u32(state.counts[key]))
            put(HR_LAST_HOUR + 2 * i, _u32(state.last_hour[key]))
        put(HR_RESULT_PART_ID, text_registers(shown.part_id if shown is not None else ""))
        return out


async def serve_modbus(bits: BitHandshake, host: str, port: int) -> tuple[Any, int]:
    """Listening: the server (``await server.shutdown()`` ends it) and the bound port."""
    placeholder = SimDevice(0, simdata=SimData(0))  # replaced below; pymodbus needs one to start
    server = ModbusTcpServer(placeholder, address=(host, port))
    server.context = StationRegisters(bits)  # type: ignore[assignment]
    await server.serve_forever(background=True)
    bound = port
    transport = server.transport
    sockets = getattr(transport, "sockets", None)
    if sockets:
        bound = sockets[0].getsockname()[1]
    log.info("plc.modbus.listening", host=host, port=bound)
    return server, bound
