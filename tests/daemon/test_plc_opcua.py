"""A PLC drives the running daemon over OPC UA (plc.opcua), with a real asyncua client: the
Trigger method and the bit handshake, changeover and counters, bad input answered with its code,
and the security rule: anonymous and unencrypted clients only on loopback."""

from __future__ import annotations

import asyncio
import math
import socket
import time
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.crypto import cert_gen
from cryptography.x509.oid import ExtendedKeyUsageOID

from inspectd.passwords import hash_password

from support.daemon_process import Daemon
from support.paths import needs_bundle
from support.plc import opcua_station, plc_station_config
from support.station import jsonl

pytestmark = needs_bundle


def opcua_url(daemon: Daemon) -> str:
    """The server's URL, once the station has started (Ready: it listens from before)."""
    port = daemon.wait_event("plc.opcua.listening", timeout=60)[0]["port"]
    daemon.wait_event("station.started", timeout=60)
    return f"opc.tcp://127.0.0.1:{port}/inspectd/"


def test_1000_parts_at_20_hz_each_get_exactly_one_result_with_their_part_id(tmp_path: Path):
    config = plc_station_config(tmp_path, opcua={"enabled": True, "port": 0})
    parts = [f"ua-{i:04d}" for i in range(1000)]

    async def drive(url: str) -> list[list]:
        out = []
        async with Client(url) as client:
            station, idx = await opcua_station(client)
            period, t_next = 0.05, time.monotonic()
            for part in parts:
                t_next += period
                out.append(await station.call_method(f"{idx}:Trigger", part))
                await asyncio.sleep(max(0.0, t_next - time.monotonic()))
        return out

    with Daemon(config) as daemon:
        results = asyncio.run(drive(opcua_url(daemon)))
        assert daemon.terminate() == 0, daemon.tail()
    # Trigger returns [Verdict, VerdictText, Score, Seq, ErrorCode, ErrorText]
    assert all(r[1] == "OK" and r[4] == "" for r in results), results[:3]
    seqs = [r[3] for r in results]
    assert seqs == sorted(seqs) and len(set(seqs)) == 1000
    recorded = {v["seq"]: v for v in jsonl(tmp_path)}
    assert len(recorded) == 1000
    assert [recorded[s]["part_id"] for s in seqs] == parts


def test_bit_handshake_changeover_counters_and_bad_input(tmp_path: Path):
    config = plc_station_config(tmp_path, opcua={"enabled": True, "port": 0})

    async def drive(url: str) -> dict:
        async with Client(url) as client:
            station, idx = await opcua_station(client)

            async def node(*path: str):
                return await station.get_child([f"{idx}:{p}" for p in path])

            part, trigger = await node("Handshake", "PartId"), await node("Handshake", "Trigger")
            valid, ack = (
                await node("Handshake", "ResultValid"),
                await node("Handshake", "ResultAck"),
            )

            async def inspect(part_id: str) -> dict:
                await part.write_value(ua.Variant(part_id, ua.VariantType.String))
                await trigger.write_value(True)
                t_end = time.monotonic() + 10
                while not await valid.read_value():
                    assert time.monotonic() < t_end
                    await asyncio.sleep(0.002)
                await trigger.write_value(False)
                result = {
                    k: await (await node("Result", k)).read_value()
                    for k in ("Verdict", "VerdictText", "Seq", "PartId", "ErrorCode", "Late")
                }
                await ack.write_value(True)
                while await valid.read_value():
                    await asyncio.sleep(0.002)
                await ack.write_value(False)
                return result

            got = {"bits": [await inspect(f"bit-{i}") for i in range(3)]}
            got["long"] = await inspect("x" * 129)
            got["method_long"] = await station.call_method(f"{idx}:Trigger", "y" * 129)
            got["unknown"] = await station.call_method(f"{idx}:SelectProduct", "nosuch")
            await asyncio.sleep(0.7)  # counters and state are pushed every 0.5 s
            got["product"] = await (await node("Product")).read_value()
            got["changeover"] = [
                await (await node(k)).read_value() for k in ("Changeover", "ChangeoverCode")
            ]
            got["ok"] = await (await node("Counters", "OK")).read_value()
            got["ready"] = await (await node("Handshake", "Ready")).read_value()
            got["health"] = await (await node("HealthState")).read_value()
            kind = client.get_node(await (await node("Result", "Verdict")).read_data_type())
            got["kind"] = (await kind.read_browse_name()).Name
            got["kinds"] = [f.Name for f in (await kind.read_data_type_definition()).Fields]
            return got

    with Daemon(config) as daemon:
        got = asyncio.run(drive(opcua_url(daemon)))
        assert daemon.terminate() == 0, daemon.tail()
    bits = got["bits"]
    assert [b["PartId"] for b in bits] == ["bit-0", "bit-1", "bit-2"]
    assert all(b["VerdictText"] == "OK" and b["Verdict"] == 1 and not b["Late"] for b in bits)
    assert [b["Seq"] for b in bits] == [1, 2, 3]
    assert got["long"]["ErrorCode"] == "invalid_part_id" and got["long"]["VerdictText"] == "ERROR"
    assert got["method_long"][1] == "ERROR" and got["method_long"][4] == "invalid_part_id"
    assert got["unknown"][0] == "unknown_product"
    assert got["product"] == "button" and got["changeover"] == ["refused", "unknown_product"]
    assert got["ok"] == 3 and got["ready"] is True and got["health"] == "ok"
    # Verdict is an enumeration as well as the number: its data type names the values
    assert got["kind"] == "VerdictKind" and got["kinds"] == ["None", "OK", "NG", "ERROR"]
    assert [v["part_id"] for v in jsonl(tmp_path)] == ["bit-0", "bit-1", "bit-2"]


def non_loopback_address() -> str:
    """This machine's address on its network (what a PLC would connect to)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent for UDP connect
            address = s.getsockname()[0]
        except OSError:
            address = ""
    if not address or address.startswith("127."):
        pytest.skip("no non-loopback IPv4 address on this machine")
    return address


async def certificate(folder: Path, name: str, uri: str, use: list) -> tuple[Path, Path]:
    key, cert = folder / f"{name}-key.pem", folder / f"{name}-cert.der"
    await cert_gen.setup_self_signed_certificate(key, cert, uri, socket.gethostname(), use, {})
    return cert, key


def test_off_loopback_only_encrypted_sessions_with_a_user_from_the_password_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    host = non_loopback_address()
    server_cert, server_key = asyncio.run(
        certificate(tmp_path, "server", "urn:inspectd:cam1", [ExtendedKeyUsageOID.SERVER_AUTH])
    )
    client_cert, client_key = asyncio.run(
        certificate(
            tmp_path,
            "client",
            "urn:example.org:FreeOpcUa:opcua-asyncio",
            [ExtendedKeyUsageOID.CLIENT_AUTH],
        )
    )
    users = tmp_path / "plc-users"
    users.write_text(f"# PLC accounts\nline1-plc:{hash_password('s3cret')}\n")
    config = plc_station_config(
        tmp_path,
        opcua={
            "enabled": True,
            "listen": host,
            "port": 0,
            "certificate": str(server_cert),
            "private_key": str(server_key),
            "users_file": str(users),
        },
    )
    secure = f"Basic256Sha256,SignAndEncrypt,{client_cert},{client_key}"

    async def attempt(url: str, *, security: str | None, user: str | None, password: str | None):
        client = Client(url, timeout=5)
        if security:
            await client.set_security_string(security)
        if user is not None:
            client.set_user(user)
            client.set_password(password or "")
        try:
            async with client:
                station, idx = await opcua_station(client)
                return await station.call_method(f"{idx}:Trigger", "secure-1")
        except Exception as exc:  # what the server refused, by its status code
            return exc

    with Daemon(config) as daemon:
        port = daemon.wait_event("plc.opcua.listening", timeout=60)[0]["port"]
        daemon.wait_event("station.started", timeout=60)
        url = f"opc.tcp://{host}:{port}/inspectd/"
        endpoints = asyncio.run(Client(url, timeout=5).connect_and_get_server_endpoints())
        anonymous = asyncio.run(attempt(url, security=secure, user=None, password=None))
        wrong = asyncio.run(attempt(url, security=secure, user="line1-plc", password="guess"))
        nobody = asyncio.run(attempt(url, security=secure, user="intruder", password="s3cret"))
        good = asyncio.run(attempt(url, security=secure, user="line1-plc", password="s3cret"))
        # a client that ignores the endpoint list and logs in over an unencrypted channel, its
        # password in plain text: asyncua's server alone let it in and run Trigger
        monkeypatch.setattr(Client, "find_endpoint", staticmethod(lambda eps, mode, uri: eps[0]))
        plain = asyncio.run(attempt(url, security=None, user="line1-plc", password="s3cret"))
        assert daemon.terminate() == 0, daemon.tail()
    # offered: Sign&Encrypt with Basic256Sha256 only, user names only
    assert {(e.SecurityMode, e.SecurityPolicyUri.rsplit("#")[-1]) for e in endpoints} == {
        (ua.MessageSecurityMode.SignAndEncrypt, "Basic256Sha256")
    }
    tokens = {t.TokenType for e in endpoints for t in e.UserIdentityTokens}
    assert tokens == {ua.UserTokenType.UserName}, tokens
    assert isinstance(anonymous, ua.uaerrors.BadIdentityTokenRejected), repr(anonymous)
    for refused in (wrong, nobody, plain):
        assert isinstance(refused, ua.uaerrors.BadUserAccessDenied), repr(refused)
    assert not isinstance(good, Exception), repr(good)
    assert good[1] == "OK" and good[3] == 1
    assert [v["part_id"] for v in jsonl(tmp_path)] == ["secure-1"]


def test_the_trigger_method_answers_ng_late_by_the_deadline(tmp_path: Path):
    config = plc_station_config(
        tmp_path, opcua={"enabled": True, "port": 0}, result_deadline_ms=200
    )

    async def drive(url: str) -> list:
        async with Client(url) as client:
            station, idx = await opcua_station(client)
            out = []
            for part in ("late-0", "late-1"):
                t0 = time.monotonic()
                result = await station.call_method(f"{idx}:Trigger", part)
                out.append((result, time.monotonic() - t0))
            return out

    # every inference takes 1.5 s
    with Daemon(config, env={"INSPECTD_SLOW_ENGINE_MS": "1500"}) as daemon:
        results = asyncio.run(drive(opcua_url(daemon)))
        # a clean stop finishes the parts in hand: both verdicts are recorded
        assert daemon.terminate() == 0, daemon.tail()
    for (verdict, text, score, seq, code, why), seconds in results:
        assert (verdict, text, seq, code) == (2, "NG", 0, "late"), (text, code, why)
        assert math.isnan(score)  # no score: nobody has seen the part yet
        assert seconds < 1.0, seconds  # at the deadline, not after the engine's 1.5 s
    recorded = {v["part_id"]: v for v in jsonl(tmp_path)}
    assert recorded["late-0"]["late"] is True and recorded["late-1"]["late"] is True
