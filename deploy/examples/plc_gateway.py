"""Example PLC gateway: consumes inspectd's MQTT contract (v1) and diverts rejected parts.

What any PLC gateway must do with the contract:

* Act on ``…/reject`` only, and treat ``ERROR`` like ``NG``: the part could not be inspected.
* De-duplicate on (station, seq): QoS 1 and the daemon's replay after a restart or broker outage
  deliver some messages twice (replays carry ``"replayed": true`` on ``…/verdict``). Keep the
  highest seq acted on per station, on disk, and ignore anything at or below it.
* Respect expiry: a reject past its ``deadline_ts`` comes too late, the part has left the
  diverter. (The broker drops rejects whose MQTT 5 message expiry passed; check it here too.)
* Expect seq gaps (the daemon crashed between sequencing and publishing): warn, never crash.
* Watch the retained ``…/status``: ``offline`` means the daemon died, ``stopped`` that it was
  stopped; either way the parts passing now are not inspected.
* Watch ``…/health`` too: a hung daemon whose MQTT connection is still alive never sends its
  Last Will, it only stops sending health (every ``interval_s``). Three intervals of silence
  from an online station are treated like ``offline``.

Run it (``--base`` may hold ``+`` wildcards to serve several stations):

    python deploy/examples/plc_gateway.py --host broker.local --base 'inspectd/v1/plant/line1/+' \\
        --state /var/lib/plc-gateway/state.json

The logic is the ``Gateway`` class (``gateway.handle(topic, payload)``, testable without a
broker); ``make_client`` wires it to paho-mqtt 2.x with a persistent MQTT 5 session, so rejects
published while the gateway was away are queued by the broker and delivered when it returns.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger("plc_gateway")

REJECT_VERDICTS = ("NG", "ERROR")  # ERROR = could not be inspected: divert it as well
STATE_VERSION = 1
SILENT_INTERVALS = 3  # health this many of the station's intervals late: it may be hung


# ================================================================================================
# THE PLC WRITE. This is the one place a real gateway talks to the PLC: write the divert tag for
# this part (OPC UA, Modbus, EtherNet/IP, ...). Make it idempotent per part_id: if the gateway
# dies between this call and saving its state, the broker redelivers the reject and it runs again.
# ================================================================================================
def divert(station: str, part_id: str, seq: int, verdict: str) -> None:
    log.info("DIVERT station=%s part_id=%s seq=%d verdict=%s", station, part_id, seq, verdict)


# ================================================================================================
# THE PLC ALARM. Called with a reason when a station stops inspecting (offline, stopped, or
# silent while online) and with None when it inspects again. A real gateway sets a tag the PLC
# acts on: stop the line, or divert every part until the station is back.
# ================================================================================================
def alarm(station: str, reason: str | None) -> None:
    if reason is None:
        log.info("ALARM CLEARED station=%s", station)
    else:
        log.error("ALARM station=%s: %s: parts are not inspected", station, reason)


class Malformed(ValueError):
    """A payload that does not follow the contract: logged and skipped."""


def _field(payload: dict[str, Any], name: str, kind: type) -> Any:
    value = payload.get(name)
    if not isinstance(value, kind):
        raise Malformed(f"field {name!r} is {value!r}")
    return value


def _seq(payload: dict[str, Any]) -> int:
    seq = _field(payload, "seq", int)
    if isinstance(seq, bool) or seq < 0:  # bool is an int in Python
        raise Malformed(f"seq is {seq!r}")
    return seq


def parse_utc(text: str) -> float:
    """ISO-8601 UTC ('2025-01-01T12:00:00.000Z') -> Unix time."""
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        raise ValueError(f"no time zone in {text!r}")
    return t.timestamp()


class Gateway:
    """Handles one message at a time (paho calls ``handle`` from its single network thread).

    Stations are keyed by their topic base (``inspectd/v1/site/line/station``): unique even when
    a wildcard subscription serves two lines whose stations share a name.
    State file: ``{"version": 1, "rejects": {station: highest seq acted on},
    "verdicts": {station: highest verdict seq seen}}``, rewritten atomically on every change.
    ``check_silence`` is called from another thread than ``handle``: both take ``lock``.
    """

    def __init__(
        self,
        state_path: str | Path,
        divert: Callable[[str, str, int, str], None] = divert,
        now: Callable[[], float] = time.time,
        alarm: Callable[[str, str | None], None] = alarm,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state_path = Path(state_path)
        self.divert = divert
        self.now = now
        self.alarm = alarm
        self.monotonic = monotonic  # health silence: a wall-clock step must not fake or hide it
        self.lock = threading.Lock()
        self.rejects: dict[str, int] = {}  # acted on (diverted or found expired)
        self.verdicts: dict[str, int] = {}  # seen, for gap detection
        self.status: dict[str, str] = {}  # last daemon state per station
        self.boot_ids: dict[str, str] = {}
        self.health: dict[str, tuple[float, float]] = {}  # (received, interval_s) per station
        self.alarmed: dict[str, str] = {}  # station -> why the alarm is raised
        self.stats = dict.fromkeys(
            (
                "messages",
                "diverted",
                "expired",
                "duplicate_rejects",
                "duplicate_verdicts",
                "replayed",
                "gaps",
                "malformed",
                "divert_failed",
                "silent",
            ),
            0,
        )
        self._load()

    # -- state --------------------------------------------------------------------------------

    def _load(self) -> None:
        if not self.state_path.exists():
            log.info("no state file %s: starting empty", self.state_path)
            return
        # A corrupt state file stops the gateway rather than being reset silently: starting empty
        # would act again on every redelivered reject.
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
            self.rejects = {str(k): int(v) for k, v in state["rejects"].items()}
            self.verdicts = {str(k): int(v) for k, v in state["verdicts"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise RuntimeError(
                f"state file {self.state_path} is unreadable ({e}): fix or delete it"
            ) from e
        log.info("state loaded from %s: %d station(s)", self.state_path, len(self.rejects))

    def _save(self) -> None:
        """Write to a temp file in the same folder, fsync, then os.replace: a crash leaves the old
        file or the new one, never half of one."""
        state = {"version": STATE_VERSION, "rejects": self.rejects, "verdicts": self.verdicts}
        folder = self.state_path.parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.state_path.name + ".", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(state, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- messages -----------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes | bytearray) -> None:
        """One MQTT message. Never raises for a bad payload: it is logged and skipped."""
        with self.lock:
            self._handle(topic, payload)

    def _handle(self, topic: str, payload: bytes | bytearray) -> None:
        self.stats["messages"] += 1
        station, _, kind = topic.rpartition("/")
        handler = {
            "reject": self._on_reject,
            "verdict": self._on_verdict,
            "status": self._on_status,
            "health": self._on_health,
        }.get(kind)
        if handler is None:
            log.debug("ignoring %s", topic)
            return
        try:
            data = json.loads(payload.decode("utf-8"))
            if not isinstance(data, dict):
                raise Malformed("not a JSON object")
            handler(station, data)
        except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError and Malformed included
            self.stats["malformed"] += 1
            log.error("malformed payload on %s skipped: %s: %r", topic, e, payload[:200])

    def _on_reject(self, station: str, msg: dict[str, Any]) -> None:
        seq = _seq(msg)
        part_id = _field(msg, "part_id", str)
        verdict = _field(msg, "verdict", str)
        if verdict not in REJECT_VERDICTS:
            raise Malformed(f"verdict {verdict!r} on a reject")
        named = msg.get("station")
        name = named if isinstance(named, str) else station
        last = self.rejects.get(station)
        if last is not None and seq <= last:
            self.stats["duplicate_rejects"] += 1
            log.info("duplicate reject %s seq=%d ignored (already at seq %d)", station, seq, last)
            return

        deadline = msg.get("deadline_ts")
        late_by = None
        if deadline is not None:
            try:
                late_by = self.now() - parse_utc(deadline)
            except (TypeError, ValueError):
                # Unknown deadline: divert anyway, letting a bad part through is the worse error.
                log.warning("reject %s seq=%d: bad deadline_ts %r, diverting", name, seq, deadline)
        if late_by is not None and late_by > 0:
            self.stats["expired"] += 1
            log.warning(
                "reject %s seq=%d part_id=%s came %.1f s after its deadline: the part "
                "already passed the diverter",
                name,
                seq,
                part_id,
                late_by,
            )
        else:
            try:
                self.divert(name, part_id, seq, verdict)
            except Exception:
                # No retry here (the message is acknowledged once handle returns): raise an alarm.
                self.stats["divert_failed"] += 1
                log.exception(
                    "DIVERT FAILED %s part_id=%s seq=%d: handle the part by hand",
                    name,
                    part_id,
                    seq,
                )
                return
            self.stats["diverted"] += 1
        self.rejects[station] = seq
        self._save()

    def _on_verdict(self, station: str, msg: dict[str, Any]) -> None:
        seq = _seq(msg)
        replayed = msg.get("replayed") is True
        if replayed:
            self.stats["replayed"] += 1
        last = self.verdicts.get(station)
        if last is not None and seq <= last:
            self.stats["duplicate_verdicts"] += 1
            log.debug("duplicate verdict %s seq=%d (replayed=%s)", station, seq, replayed)
            return
        if last is not None and seq > last + 1:
            # Expected after a daemon crash (seqs taken but never published). Those parts have no
            # verdict: check them by hand if it matters.
            self.stats["gaps"] += 1
            missing = f"{last + 1}" if seq == last + 2 else f"{last + 1}..{seq - 1}"
            log.warning(
                "seq gap on %s: seq %s missing (got %d after %d)", station, missing, seq, last
            )
        self.verdicts[station] = seq
        self._save()

    def _on_status(self, station: str, msg: dict[str, Any]) -> None:
        state = _field(msg, "state", str)
        boot_id = msg.get("boot_id")
        previous = self.status.get(station)
        if isinstance(boot_id, str):
            old_boot = self.boot_ids.get(station)
            self.boot_ids[station] = boot_id
            if old_boot is not None and old_boot != boot_id:
                log.warning(
                    "daemon %s restarted (boot_id %s): expect replayed messages and "
                    "maybe a seq gap",
                    station,
                    boot_id,
                )
        if state == previous:
            return
        self.status[station] = state
        if state == "online":
            log.info("daemon %s online", station)
            self.health.pop(station, None)  # a new run: its silence counts from its own health
            self._set_alarm(station, None)
        elif state == "stopped":
            # A clean shutdown (maintenance, an update) is no inspection all the same: a line
            # still running must hear it like a crash.
            self._set_alarm(station, "STOPPED (a clean shutdown)")
        elif state == "offline":
            # The broker published the daemon's Last Will: it died or lost the network. Parts
            # passing now are NOT inspected; the PLC must stop the line or divert everything
            # until the status is back to "online".
            self._set_alarm(station, "OFFLINE (its Last Will)")
        else:
            log.warning("daemon %s in unknown state %r", station, state)

    def _on_health(self, station: str, msg: dict[str, Any]) -> None:
        interval = msg.get("interval_s")
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
            raise Malformed(f"interval_s is {interval!r}")
        self.health[station] = (self.monotonic(), float(interval))
        if self.alarmed.get(station, "").startswith("SILENT"):
            self._set_alarm(station, None)

    def check_silence(self) -> list[str]:
        """Raise the alarm for every online station whose health is ``SILENT_INTERVALS`` of its
        own interval late; returns those newly alarmed. Call it every second or so."""
        with self.lock:
            now, newly = self.monotonic(), []
            for station, (received, interval) in self.health.items():
                quiet = now - received
                if (
                    self.status.get(station) == "online"
                    and quiet > SILENT_INTERVALS * interval
                    and station not in self.alarmed
                ):
                    self.stats["silent"] += 1
                    self._set_alarm(
                        station,
                        f"SILENT: no health for {quiet:.0f} s (sent every {interval:g} s), "
                        "it may be hung",
                    )
                    newly.append(station)
            return newly

    def _set_alarm(self, station: str, reason: str | None) -> None:
        if reason is not None:
            self.alarmed[station] = reason
        elif self.alarmed.pop(station, None) is None:
            return  # nothing raised: nothing to clear
        try:
            self.alarm(station, reason)
        except Exception:  # the PLC write failed: say so loudly, the state above stays right
            log.exception("ALARM WRITE FAILED %s (%s): tell the line by hand", station, reason)


# -- MQTT wiring ------------------------------------------------------------------------------


def make_client(
    gateway: Gateway,
    *,
    host: str,
    port: int,
    base: str,
    client_id: str,
    session_expiry_s: int = 3600,
    username: str | None = None,
    password: str | None = None,
    tls_ca: str | None = None,
) -> mqtt.Client:
    """A paho client feeding ``gateway``; start it with ``loop_forever()`` or ``loop_start()``.

    Persistent session: a fixed client_id, clean_start=False and a session expiry, so the broker
    keeps the subscriptions and queues QoS 1 messages for ``session_expiry_s`` while the gateway is
    away. paho sends the PUBACK once ``handle`` has returned, i.e. after the state is saved.
    """
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    if tls_ca is not None:
        client.tls_set(ca_certs=tls_ca)
    client.reconnect_delay_set(1, 30)

    # Nagle off: paho leaves it on, and a PUBACK held back by it holds the broker's next message
    # to us until the delayed ACK (up to 40 ms). The broker needs `set_tcp_nodelay true` too.
    def no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    client.on_socket_open = no_delay
    topics = [(f"{base}/{kind}", 1) for kind in ("reject", "verdict", "status", "health")]

    def on_connect(client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        log.info("connected to %s:%d (session present: %s)", host, port, flags.session_present)
        client.subscribe(topics)

    def on_disconnect(client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:  # not our own disconnect(): paho reconnects by itself
            log.warning("disconnected (%s): reconnecting", reason_code)

    def on_message(client, userdata, msg: mqtt.MQTTMessage) -> None:  # noqa: ANN001
        try:
            gateway.handle(msg.topic, msg.payload)
        except Exception:  # e.g. the state file could not be written: log, keep running
            log.exception("failed to handle %s", msg.topic)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry_s
    client.connect_async(host, port, keepalive=30, clean_start=False, properties=props)
    return client


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="localhost")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument(
        "--base",
        required=True,
        help="topic base, e.g. inspectd/v1/plant/line1/st1 or inspectd/v1/plant/line1/+",
    )
    p.add_argument(
        "--state",
        default="plc_gateway_state.json",
        help="JSON file with the highest seq acted on per station",
    )
    p.add_argument(
        "--client-id",
        default=f"inspectd-plc-gateway-{socket.gethostname()}",
        help="must stay the same across restarts (persistent session)",
    )
    p.add_argument(
        "--session-expiry",
        type=int,
        default=3600,
        help="seconds the broker queues messages while the gateway is away",
    )
    p.add_argument("--username")
    p.add_argument(
        "--password",
        default=os.environ.get("PLC_GATEWAY_PASSWORD"),
        help="or set PLC_GATEWAY_PASSWORD",
    )
    p.add_argument("--tls-ca", help="CA file: connect with TLS")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    gateway = Gateway(args.state)
    client = make_client(
        gateway,
        host=args.host,
        port=args.port,
        base=args.base,
        client_id=args.client_id,
        session_expiry_s=args.session_expiry,
        username=args.username,
        password=args.password,
        tls_ca=args.tls_ca,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve(gateway, client, stop)
    except KeyboardInterrupt:
        pass  # serve() disconnected on its way out
    log.info("stopped: %s", gateway.stats)
    return 0


def serve(gateway: Gateway, client: mqtt.Client, stop: threading.Event, every: float = 1.0) -> None:
    """paho's network thread handles the messages; this thread watches for silence until
    ``stop`` is set, then disconnects."""
    client.loop_start()
    try:
        while not stop.wait(every):
            gateway.check_silence()
    finally:
        client.disconnect()
        client.loop_stop()


if __name__ == "__main__":
    raise SystemExit(main())
