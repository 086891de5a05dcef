"""A PLC drives the running daemon over Modbus TCP (plc.modbus), with a real pymodbus client on
loopback, through the handshake of docs/plc.md: one result per part with its part id, late NG
by the deadline with the verdict still on MQTT, bad writes answered with their code while
nothing is lost, and not_ready at once (Ready 0, nothing recorded) while the engine loads (the
servers listen from before; OPC UA checked there too) and while the camera is offline."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

from asyncua import Client
from pymodbus.client import ModbusTcpClient

from inspectd.plc import modbus as mb
from inspectd.plc.modbus import text_registers

from support.daemon_process import Daemon
from support.paths import needs_bundle
from support.plc import ModbusPlc, opcua_station, plc_station_config, run
from support.products import copy_bundle
from support.requester import Requester, wait_online
from support.station import BASE, VERDICT, jsonl

pytestmark = needs_bundle


def modbus_port(daemon: Daemon) -> int:
    """The server's port, once the station has started (Ready: it listens from before)."""
    port = int(daemon.wait_event("plc.modbus.listening", timeout=60)[0]["port"])
    daemon.wait_event("station.started", timeout=60)
    return port


def test_1000_parts_at_20_hz_each_get_exactly_one_result_with_their_part_id(tmp_path: Path):
    config = plc_station_config(tmp_path, modbus={"enabled": True, "port": 0})
    parts = [f"mb-{i:04d}" for i in range(1000)]
    results = []
    with Daemon(config) as daemon:
        plc = ModbusPlc(modbus_port(daemon))
        assert plc.status() & 1, "Ready"
        period, t_next = 0.05, time.monotonic()
        for part in parts:
            t_next += period  # 20 Hz: the next trigger no earlier than this
            results.append(plc.inspect(part))
            time.sleep(max(0.0, t_next - time.monotonic()))
        plc.close()
        assert daemon.terminate() == 0, daemon.tail()
    assert [r.part_id for r in results] == parts
    assert all(r.verdict == "OK" and r.code is None for r in results), Counter(
        (r.verdict, r.code) for r in results
    )
    seqs = [r.seq for r in results]
    assert seqs == sorted(seqs) and len(set(seqs)) == 1000 and seqs[0] >= 1
    # each part recorded exactly once, under its part id and the seq its result said
    recorded = {v["seq"]: v for v in jsonl(tmp_path)}
    assert len(recorded) == 1000
    assert [recorded[r.seq]["part_id"] for r in results] == parts
    assert not any(v["late"] for v in recorded.values())


def test_no_verdict_by_the_deadline_is_ng_late_in_time_and_the_verdict_still_reaches_mqtt(
    mosquitto, tmp_path: Path
):
    config = plc_station_config(
        tmp_path,
        port=mosquitto.port,
        modbus={"enabled": True, "port": 0},
        result_deadline_ms=200,
        sections={"archive": {"enabled": True, "dir": str(tmp_path / "archive"), "ok_every": 1}},
    )
    req = Requester(mosquitto.host, mosquitto.port, [f"{BASE}/#", "requester/#"])
    # every inference takes 1.5 s: far past the 200 ms deadline
    with Daemon(config, env={"INSPECTD_SLOW_ENGINE_MS": "1500"}) as daemon, req:
        wait_online(req)
        plc = ModbusPlc(modbus_port(daemon))
        late = [plc.inspect(f"slow-{i}") for i in range(3)]
        for r in late:
            assert (r.verdict, r.code, r.seq) == ("NG", "late", 0), r
            # answered at the deadline, not after the 1.5 s the engine takes
            assert r.seconds < 1.0, r
        assert [r.part_id for r in late] == ["slow-0", "slow-1", "slow-2"]
        # the verdicts come later, recorded and published flagged late
        got = req.wait(VERDICT, n=3, timeout=30)
        verdicts = {m.json()["part_id"]: m.json() for m in got}
        for part in ("slow-0", "slow-1", "slow-2"):
            v = verdicts[part]
            assert v["late"] is True and v["verdict"] == "OK" and v["seq"] >= 1, v
        # MQTT's deadline_ms goes through the same core
        req.publish(
            f"{BASE}/trigger",
            {"request_id": "mqtt-slow", "part_id": "mqtt-slow", "deadline_ms": 200},
            response_topic="requester/answers",
        )
        answer = req.wait("requester/answers", timeout=5)[0].json()
        assert answer["status"] == "late" and answer["verdict"]["verdict"] == "NG"
        v = req.wait(lambda m: m.topic == VERDICT and m.json()["part_id"] == "mqtt-slow")
        assert v[0].json()["late"] is True
        plc.close()
        assert daemon.terminate() == 0, daemon.tail()
    # the part id names the archived files too (<seq>-<part_id>-<verdict>.*)
    archived = {p.name for p in (tmp_path / "archive").rglob("*.json")}
    for part in ("slow-0", "slow-1", "slow-2"):
        seq = verdicts[part]["seq"]
        assert f"{seq:010d}-{part}-OK.json" in archived, archived


def test_bad_writes_get_their_code_and_lose_nothing(tmp_path: Path):
    products = tmp_path / "products"
    copy_bundle(products, "button")
    copy_bundle(products, "button2")
    config = plc_station_config(
        tmp_path,
        products_dir=products,
        modbus={"enabled": True, "port": 0},
        products=["button", "button2"],
        result_deadline_ms=5000,
    )
    # 300 ms a part; a product switch takes that long too (not_ready meanwhile)
    with Daemon(config, env={"INSPECTD_SLOW_ENGINE_MS": "300"}) as daemon:
        port = modbus_port(daemon)
        plc = ModbusPlc(port)
        c = plc.client
        first = plc.inspect("first")
        assert first.verdict == "OK" and first.code is None and first.seq >= 1

        # registers out of the map, and writes to what the station owns: exception 2, no change
        for r in (
            c.read_holding_registers(50, count=1),
            c.read_holding_registers(mb.OUT_END - 1, count=2),
            c.write_register(mb.HR_VERDICT, 1),
            c.write_coil(2, True),
            c.read_coils(0, count=3),
            c.read_discrete_inputs(0, count=5),
        ):
            assert r.isError() and r.exception_code == 2, r
        # a part id too long for its 32 registers spills into what is not part id: refused whole
        plc.write_part_id("kept")
        r = c.write_registers(mb.HR_PART_ID, [0x4142] * (mb.PART_ID_REGS + 1))
        assert r.isError() and r.exception_code == 2, r
        assert plc.regs(mb.HR_PART_ID, 2) == text_registers("kept")[:2]

        # a part id that is not UTF-8, and an empty one: ERROR invalid_part_id at once
        c.write_registers(mb.HR_PART_ID, [0xFFFE] + [0] * (mb.PART_ID_REGS - 1))
        bad = plc.wait_result(plc.trigger())
        assert (bad.verdict, bad.code, bad.seq) == ("ERROR", "invalid_part_id", 0), bad
        empty = plc.inspect("")
        assert (empty.verdict, empty.code) == ("ERROR", "invalid_part_id"), empty

        # an unknown product number: refused with its code, the running product stays
        c.write_register(mb.HR_SELECT_PRODUCT, 9)
        co = plc.regs(mb.HR_PRODUCT, 3)
        assert co == [1, 2, mb.ERROR_CODES["unknown_product"]], co
        assert plc.regs(mb.HR_SELECT_PRODUCT, 1) == [0]
        assert plc.inspect("still-button").verdict == "OK"

        # product 2: while it loads a trigger is answered not_ready at once, then it runs
        c.write_register(mb.HR_SELECT_PRODUCT, 2)
        during = plc.inspect("during-switch")
        assert (during.verdict, during.code) == ("ERROR", "not_ready"), during
        assert during.seconds < 0.25, during
        deadline = time.monotonic() + 20
        while plc.regs(mb.HR_PRODUCT, 2) != [2, 0]:
            assert time.monotonic() < deadline, plc.regs(mb.HR_PRODUCT, 3)
            time.sleep(0.02)
        assert plc.regs(mb.HR_SELECT_PRODUCT, 1) == [0]
        after = plc.inspect("after-switch")
        assert after.verdict == "OK" and after.code is None

        # a PLC that drops its connection between trigger and acknowledge: the result waits
        gone = ModbusPlc(port)
        gone.start("gone-1")
        gone.close()
        back = ModbusPlc(port)
        result = back.wait_result(time.monotonic())
        assert result.part_id == "gone-1" and result.verdict == "OK" and result.seq > after.seq
        back.close()
        plc.close()
        assert daemon.terminate() == 0, daemon.tail()

    recorded = jsonl(tmp_path)
    # every part taken was recorded once; refused ones were answered at once and never queued
    assert [v["part_id"] for v in recorded] == ["first", "still-button", "after-switch", "gone-1"]
    assert [v["product"] for v in recorded] == ["button", "button", "button2", "button2"]


def test_a_modbus_client_reads_the_station_state(tmp_path: Path):
    config = plc_station_config(tmp_path, modbus={"enabled": True, "port": 0})
    with Daemon(config) as daemon:
        port = modbus_port(daemon)
        daemon.wait_event("station.ready")
        # health names where the servers listen (health.json: also without a broker)
        health = json.loads((tmp_path / "state" / "health.json").read_text())
        assert health["plc"]["modbus"] == {"listen": "127.0.0.1", "port": port}
        assert health["plc"]["opcua"] is None and health["plc"]["handshake"]["late"] == 0
        client = ModbusTcpClient("127.0.0.1", port=port)
        assert client.connect()
        plc = ModbusPlc.__new__(ModbusPlc)
        plc.client = client
        for i in range(3):
            plc.inspect(f"count-{i}")
        time.sleep(0.3)  # the state is cached for 0.2 s
        regs = plc.regs(mb.HR_COUNTS, 12)
        ok_since_start = regs[0] << 16 | regs[1]
        ok_last_hour = regs[6] << 16 | regs[7]
        assert ok_since_start == 3 and ok_last_hour == 3, regs
        assert plc.regs(mb.HR_HEALTH, 1) == [0]
        assert client.read_discrete_inputs(0, count=4).bits[:4] == [True, False, False, False]
        client.close()
        assert daemon.terminate() == 0, daemon.tail()


def camera_child(tmp: Path, timeout: float = 20.0) -> int:
    """The pid of the camera's child process, as health.json names it once it is online."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            camera = json.loads((tmp / "state" / "health.json").read_text())["camera"]
        except (OSError, ValueError, KeyError):
            camera = {}
        pid = (camera.get("process") or {}).get("child_pid")
        if camera.get("state") == "ok" and pid:
            return int(pid)
        assert time.monotonic() < deadline, camera
        time.sleep(0.05)


def test_a_trigger_while_the_camera_is_offline_is_not_ready_at_once_and_never_recorded(
    tmp_path: Path,
):
    # The folder camera in a watched child process, as a GenICam one runs. Backoff 4 s: an
    # offline spell long enough to trigger into.
    isolate = {"enabled": True, "heartbeat_timeout_s": 3.0, "restart_backoff_s": 4.0}
    config = plc_station_config(
        tmp_path,
        camera={"isolate": {**isolate, "restart_backoff_max_s": 4.0}},
        modbus={"enabled": True, "port": 0},
        result_deadline_ms=5000,
    )
    with Daemon(config) as daemon:
        plc = ModbusPlc(modbus_port(daemon))
        before = plc.inspect("before")
        assert (before.verdict, before.code) == ("OK", None), before
        child = camera_child(tmp_path)

        # A part the camera was asked for when it died: taken, so answered with its ERROR
        # verdict, recorded (the reliability rule: never silence)
        os.kill(child, signal.SIGSTOP)  # the grab hangs in the stopped child
        t0 = plc.start("in-flight")
        time.sleep(0.5)
        os.kill(child, signal.SIGKILL)
        taken = plc.wait_result(t0)
        assert (taken.verdict, taken.code, taken.part_id) == (
            "ERROR",
            "camera_offline",
            "in-flight",
        )
        assert taken.seq > before.seq, taken

        # While it is offline: Ready 0, and a trigger is answered not_ready at once, no verdict
        daemon.wait_event("camera.offline")
        deadline = time.monotonic() + 1
        while plc.status() & 1:
            assert time.monotonic() < deadline, "Ready while the camera is offline"
            time.sleep(0.02)
        assert plc.client.read_discrete_inputs(0, count=1).bits[0] is False
        for i in range(2):
            off = plc.inspect(f"offline-{i}")
            assert (off.verdict, off.code, off.seq) == ("ERROR", "not_ready", 0), off
            assert off.seconds < 0.25, off

        # back with a new child: Ready again, parts inspected
        daemon.wait_event("camera.restarted", timeout=20)
        deadline = time.monotonic() + 5
        while not plc.status() & 1:
            assert time.monotonic() < deadline, "not Ready after the camera came back"
            time.sleep(0.02)
        after = plc.inspect("after")
        assert (after.verdict, after.code) == ("OK", None), after
        plc.close()
        assert daemon.terminate() == 0, daemon.tail()
    recorded = jsonl(tmp_path)
    assert [v["part_id"] for v in recorded] == ["before", "in-flight", "after"]
    assert recorded[1]["verdict"] == "ERROR" and recorded[1]["error"].startswith("camera_offline")


def test_the_servers_listen_while_the_engine_loads_with_ready_0_and_triggers_not_ready(
    tmp_path: Path,
):
    config = plc_station_config(
        tmp_path,
        modbus={"enabled": True, "port": 0},
        opcua={"enabled": True, "port": 0},
        result_deadline_ms=10000,
    )

    async def opcua_while_loading(url: str) -> tuple[bool, list]:
        async with Client(url) as client:
            station, idx = await opcua_station(client)
            ready = await (
                await station.get_child([f"{idx}:Handshake", f"{idx}:Ready"])
            ).read_value()
            return ready, await station.call_method(f"{idx}:Trigger", "ua-while-loading")

    # the warm-up takes 4 s longer (and every part 4 s): the engine is still loading below
    with Daemon(config, env={"INSPECTD_SLOW_ENGINE_MS": "4000"}) as daemon:
        plc = ModbusPlc(int(daemon.wait_event("plc.modbus.listening", timeout=60)[0]["port"]))
        port = daemon.wait_event("plc.opcua.listening")[0]["port"]
        assert not plc.status() & 1, "Ready while the engine loads"
        early = plc.inspect("mb-while-loading")
        assert (early.verdict, early.code, early.seq) == ("ERROR", "not_ready", 0), early
        assert early.seconds < 0.25, early
        ready, answer = run(opcua_while_loading(f"opc.tcp://127.0.0.1:{port}/inspectd/"))
        assert ready is False
        assert (answer[1], answer[4]) == ("ERROR", "not_ready"), answer
        assert "starting" in answer[5], answer
        assert not daemon.events("station.started"), "the checks above came too late"

        daemon.wait_event("station.started", timeout=60)
        deadline = time.monotonic() + 5
        while not plc.status() & 1:
            assert time.monotonic() < deadline, "not Ready after the start"
            time.sleep(0.02)
        after = plc.inspect("after-start")
        assert (after.verdict, after.code) == ("OK", None), after
        plc.close()
        assert daemon.terminate() == 0, daemon.tail()
    assert [v["part_id"] for v in jsonl(tmp_path)] == ["after-start"]
