"""The OPC UA server (asyncua): one object per station, its address space in docs/plc.md.

``Trigger(PartId)`` is a method that returns the result (by the deadline: late is NG); the
``Handshake`` folder holds the same handshake as bits (``inspectd.plc.bits``) for PLCs that
cannot call methods; ``Result`` the fields of the result shown there; ``SelectProduct(Product)``
switches bundles. Values the station owns are pushed into the nodes on every change (and every
``REFRESH_S`` for the counters and health), so subscriptions see them as well as reads.

Security, the same rule as the page: anonymous and unencrypted clients only when the server
listens on loopback; elsewhere the only endpoint is Basic256Sha256 Sign&Encrypt with the
server's certificate, and sessions need a user name and password from ``users_file``.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import structlog
from asyncua import Node, Server, ua
from asyncua.common.structures104 import new_enum
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager

from inspectd.config.base import is_loopback
from inspectd.config.plc import OpcUaConfig
from inspectd.contract.verdict import Verdict
from inspectd.mqtt.inbound import id_problem
from inspectd.passwords import check_password
from inspectd.plc.bits import BitHandshake
from inspectd.plc.handshake import INVALID_PART_ID, Result

log = structlog.get_logger(__name__)

NAMESPACE = "urn:inspectd:plc"
REFRESH_S = 0.5
_UNSET = object()
METHOD_SLACK_S = 5.0  # a method waits this long past the deadline for the core's answer
VERDICT_NUMBERS = {None: 0, Verdict.OK: 1, Verdict.NG: 2, Verdict.ERROR: 3}
VERDICT_NAMES = ("None", "OK", "NG", "ERROR")  # VerdictKind, by number


def read_users(path: Path) -> dict[str, str]:
    """user -> scrypt hash, one ``user:hash`` a line (blank lines and # comments skipped)."""
    users = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, stored = line.partition(":")
        if not sep or not name or not stored.startswith("scrypt$"):
            raise ValueError(f"{path}:{n}: expected user:scrypt$… (inspectd ui --hash-password)")
        users[name] = stored
    if not users:
        raise ValueError(f"{path}: no users")
    return users


class PasswordFileUsers(UserManager):
    """Users from the password file; anonymous sessions only where ``anonymous`` (loopback)."""

    def __init__(self, users: dict[str, str], *, anonymous: bool) -> None:
        self.users = users
        self.anonymous = anonymous

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if not self.anonymous and not certificate:
            # asyncua opens a SecurityPolicy#None channel for any client (discovery needs one)
            # and would let a session that ignores the endpoint list log in over it, password
            # in plain text: off loopback, a session needs the client certificate of a
            # Sign&Encrypt channel (given here for user name tokens as the channel's).
            log.warning("plc.opcua.unencrypted_refused", user=(username or "")[:64])
            return None
        if username is None:
            return User(role=UserRole.User) if self.anonymous else None
        stored = self.users.get(username)
        if stored is None or not check_password(password or "", stored):
            log.warning("plc.opcua.login_refused", user=username[:64])
            return None
        return User(role=UserRole.User, name=username)


class StationNodes:
    """The station's object and what keeps it current."""

    def __init__(self, server: Server, bits: BitHandshake, loop: asyncio.AbstractEventLoop):
        self.server, self.bits, self.loop = server, bits, loop
        self.nodes: dict[str, Node] = {}
        self._dirty = asyncio.Event()
        self._pushed: dict[str, Any] = {}

    async def build(self, idx: int, name: str) -> None:
        objects = self.server.get_objects_node()
        station = await objects.add_object(idx, name)
        hs = await station.add_folder(idx, "Handshake")
        res = await station.add_folder(idx, "Result")
        counters = await station.add_folder(idx, "Counters")
        V = ua.VariantType

        # Result/Verdict's data type: an enumeration a client can read the names of
        verdict_kind = await new_enum(self.server, idx, "VerdictKind", list(VERDICT_NAMES))

        async def var(
            parent: Node, key: str, value: Any, vtype: Any, *, writable=False, datatype=None
        ) -> Node:
            node = await parent.add_variable(idx, key, ua.Variant(value, vtype), datatype=datatype)
            if writable:
                await node.set_writable()
            return node

        for key, writable in (
            ("Ready", False),
            ("Busy", False),
            ("Trigger", True),
            ("TriggerAck", False),
            ("ResultValid", False),
            ("ResultAck", True),
        ):
            self.nodes[key] = await var(hs, key, False, V.Boolean, writable=writable)
        self.nodes["PartId"] = await var(hs, "PartId", "", V.String, writable=True)
        for key, value, vtype in (
            ("Verdict", 0, V.Int32),
            ("VerdictText", "", V.String),
            ("Score", math.nan, V.Double),
            ("Threshold", math.nan, V.Double),
            ("Seq", 0, V.UInt64),
            ("ErrorCode", "", V.String),
            ("ErrorText", "", V.String),
            ("ResultPartId", "", V.String),
            ("Late", False, V.Boolean),
        ):
            self.nodes[key] = await var(
                res,
                key.replace("ResultPartId", "PartId"),
                value,
                vtype,
                datatype=verdict_kind.nodeid if key == "Verdict" else None,
            )
        for key, value, vtype in (
            ("Product", "", V.String),
            ("ProductNumber", 0, V.Int32),
            ("Changeover", "ready", V.String),
            ("ChangeoverCode", "", V.String),
            ("ChangeoverText", "", V.String),
            ("HealthState", "ok", V.String),
            ("Problems", "", V.String),
        ):
            self.nodes[key] = await var(station, key, value, vtype)
        for key in ("OK", "NG", "ERROR", "LastHourOK", "LastHourNG", "LastHourERROR"):
            self.nodes[key] = await var(counters, key, 0, V.UInt64)
        in_args = [_arg("PartId", _type(ua.ObjectIds.String))]
        out_args = [
            _arg("Verdict", _type(ua.ObjectIds.Int32)),
            _arg("VerdictText", _type(ua.ObjectIds.String)),
            _arg("Score", _type(ua.ObjectIds.Double)),
            _arg("Seq", _type(ua.ObjectIds.UInt64)),
            _arg("ErrorCode", _type(ua.ObjectIds.String)),
            _arg("ErrorText", _type(ua.ObjectIds.String)),
        ]
        await station.add_method(idx, "Trigger", self._trigger_method, in_args, out_args)
        await station.add_method(
            idx,
            "SelectProduct",
            self._select_method,
            [_arg("Product", _type(ua.ObjectIds.String))],
            [
                _arg("ErrorCode", _type(ua.ObjectIds.String)),
                _arg("ErrorText", _type(ua.ObjectIds.String)),
            ],
        )
        # what the PLC writes goes straight into the handshake
        for key, write in (
            ("PartId", lambda v: self.bits.write_part_id(str(v or ""))),
            ("Trigger", lambda v: self.bits.write_trigger(bool(v))),
            ("ResultAck", lambda v: self.bits.write_ack(bool(v))),
        ):
            self.server.set_attribute_value_setter(self.nodes[key].nodeid, _setter(write))
        self.bits.listeners.append(self.changed)
        self.bits.link.listeners.append(self.changed)

    def changed(self) -> None:
        """From any thread: push the values soon (coalesced)."""
        self.loop.call_soon_threadsafe(self._dirty.set)

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._dirty.wait(), REFRESH_S)
            except TimeoutError:
                pass
            self._dirty.clear()
            try:
                await self.push()
            except Exception:  # the server must go on answering
                log.exception("plc.opcua.refresh_failed")

    async def push(self) -> None:
        b, state = self.bits.snapshot(), self.bits.link.state()
        shown = b.shown
        values: list[tuple[str, Any, Any]] = [
            ("Ready", state.ready, ua.VariantType.Boolean),
            ("Busy", b.busy, ua.VariantType.Boolean),
            ("TriggerAck", b.trigger_ack, ua.VariantType.Boolean),
            *_result_values(shown),
            ("Product", state.product, ua.VariantType.String),
            ("ProductNumber", state.product_number, ua.VariantType.Int32),
            ("Changeover", state.changeover, ua.VariantType.String),
            ("ChangeoverCode", state.changeover_code or "", ua.VariantType.String),
            ("ChangeoverText", state.changeover_text or "", ua.VariantType.String),
            ("HealthState", state.health, ua.VariantType.String),
            ("Problems", "; ".join(state.problems), ua.VariantType.String),
        ]
        for key in ("OK", "NG", "ERROR"):
            values.append((key, state.counts[key], ua.VariantType.UInt64))
            values.append((f"LastHour{key}", state.last_hour[key], ua.VariantType.UInt64))
        # the result's fields before ResultValid: a PLC that sees it set reads this result
        values.append(("ResultValid", b.result_valid, ua.VariantType.Boolean))
        for key, value, vtype in values:
            # only what changed: a write is a data change to every subscriber; NaN != NaN
            last = self._pushed.get(key, _UNSET)
            if last == value or (isinstance(value, float) and math.isnan(value) and last != last):
                continue
            await self.server.write_attribute_value(
                self.nodes[key].nodeid, ua.DataValue(ua.Variant(value, vtype))
            )
            self._pushed[key] = value

    async def _trigger_method(self, parent: ua.NodeId, part_id: ua.Variant) -> list[ua.Variant]:
        part = part_id.Value if isinstance(part_id, ua.Variant) else part_id
        link = self.bits.link
        request_id = f"opcua-call-{time.monotonic_ns():x}"
        text = part if isinstance(part, str) else ""
        problem = id_problem("PartId", part)
        if problem is not None:
            return _method_result(
                Result(request_id, text, "refused", Verdict.ERROR, INVALID_PART_ID, problem)
            )
        done: asyncio.Future[Result] = self.loop.create_future()

        def answer(result: Result) -> None:
            self.loop.call_soon_threadsafe(_settle_future, done, result)

        deadline_s = link.deadline_ms / 1000.0
        refusal = link.handshake.submit(request_id, part, time.monotonic() + deadline_s, answer)
        if refusal is not None:
            return _method_result(
                Result(request_id, part, "refused", Verdict.ERROR, refusal.code, refusal.text)
            )
        # the core answers by the deadline (late at worst); the slack only guards a bug
        result = await asyncio.wait_for(done, deadline_s + METHOD_SLACK_S)
        return _method_result(result)

    async def _select_method(self, parent: ua.NodeId, product: ua.Variant) -> list[ua.Variant]:
        name = product.Value if isinstance(product, ua.Variant) else product
        refusal = self.bits.link.select(str(name or ""))
        code, text = ("", "") if refusal is None else (refusal.code, refusal.text)
        return [ua.Variant(code, ua.VariantType.String), ua.Variant(text, ua.VariantType.String)]


def _settle_future(future: asyncio.Future[Result], result: Result) -> None:
    if not future.done():
        future.set_result(result)


def _type(object_id: int) -> ua.NodeId:
    return ua.NodeId(ua.Int32(object_id))


def _arg(name: str, datatype: ua.NodeId) -> ua.Argument:
    arg = ua.Argument()
    arg.Name = name
    arg.DataType = datatype
    arg.ValueRank = -1
    return arg


def _setter(write: Any) -> Any:
    def setter(node: Any, attr: ua.AttributeIds, value: ua.DataValue) -> None:
        node.attributes[attr].value = value
        write(value.Value.Value if value.Value is not None else None)

    return setter


def _result_values(shown: Result | None) -> list[tuple[str, Any, Any]]:
    V = ua.VariantType
    score = shown.score if shown is not None else None
    threshold = shown.threshold if shown is not None else None
    return [
        ("Verdict", VERDICT_NUMBERS[shown.verdict if shown else None], V.Int32),
        ("VerdictText", shown.verdict.value if shown else "", V.String),
        ("Score", math.nan if score is None else score, V.Double),
        ("Threshold", math.nan if threshold is None else threshold, V.Double),
        ("Seq", shown.seq if shown else 0, V.UInt64),
        ("ErrorCode", (shown.code or "") if shown else "", V.String),
        ("ErrorText", (shown.text or "") if shown else "", V.String),
        ("ResultPartId", shown.part_id if shown else "", V.String),
        ("Late", bool(shown and shown.status == "late"), V.Boolean),
    ]


def _method_result(result: Result) -> list[ua.Variant]:
    V = ua.VariantType
    return [
        ua.Variant(VERDICT_NUMBERS[result.verdict], V.Int32),
        ua.Variant(result.verdict.value, V.String),
        ua.Variant(math.nan if result.score is None else result.score, V.Double),
        ua.Variant(result.seq, V.UInt64),
        ua.Variant(result.code or "", V.String),
        ua.Variant(result.text or "", V.String),
    ]


async def serve_opcua(
    bits: BitHandshake, cfg: OpcUaConfig, loop: asyncio.AbstractEventLoop, station: str
) -> tuple[Any, int]:
    """Listening: an object with ``stop()`` and the bound port."""
    loopback = is_loopback(cfg.listen)
    users = read_users(cfg.users_file) if cfg.users_file is not None else None
    # without a users file only anonymous sessions, and only on loopback (the config says so)
    manager = PasswordFileUsers(users or {}, anonymous=loopback)
    server = Server(user_manager=manager)
    await server.init()
    server.set_server_name(f"inspectd {station}")
    # the URI a client checks against the certificate's subject alternative name
    await server.set_application_uri(f"urn:inspectd:{station}")
    host = "[::1]" if cfg.listen == "::1" else cfg.listen
    server.set_endpoint(f"opc.tcp://{host}:{cfg.port}/inspectd/")
    policies = []
    if loopback:
        policies.append(ua.SecurityPolicyType.NoSecurity)
    if cfg.certificate is not None and cfg.private_key is not None:
        await server.load_certificate(str(cfg.certificate))
        await server.load_private_key(str(cfg.private_key))
        policies.append(ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt)
    server.set_security_policy(policies)
    tokens: list[type] = [ua.UserNameIdentityToken] if users else []
    if loopback:
        tokens.append(ua.AnonymousIdentityToken)
    server.set_identity_tokens(tokens)
    idx = await server.register_namespace(NAMESPACE)
    nodes = StationNodes(server, bits, loop)
    await nodes.build(idx, station)
    await server.start()
    bound = cfg.port
    bserver = getattr(server, "bserver", None)
    sockets = getattr(getattr(bserver, "_server", None), "sockets", None)
    if sockets:
        bound = sockets[0].getsockname()[1]
    refresher = loop.create_task(nodes.run())

    class Running:
        async def stop(self) -> None:
            refresher.cancel()
            await server.stop()

    log.info(
        "plc.opcua.listening",
        host=cfg.listen,
        port=bound,
        security=[p.name for p in policies],
        anonymous=loopback,
    )
    return Running(), bound
