"""The v1 message contract (docs/mqtt.md): what a station publishes, built from records.

Pure: topics, payload bytes, QoS, retain and expiry, no transport (no paho). The outbox stores
what ``verdict_messages`` builds and ``inspectd.delivery`` hands it to the client; status,
health, stats, overlays and answers are built here too and enqueued directly.
tests/unit/test_messages.py checks every builder against the contract table of docs/mqtt.md.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from inspectd.contract.topics import Topics
from inspectd.contract.verdict import Verdict, VerdictRecord, iso_utc
from inspectd.contract.vocabulary import StationState

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class OutgoingMessage:
    """One message to publish. ``on_ack(code)`` runs on the client's network thread when the
    broker answers it, with the PUBACK's reason code: below 0x80 it took the message (0x00, or
    0x10 "no matching subscribers"; always 0x00 on MQTT 3.1.1), from 0x80 on it refused it
    (MQTT 5 only). Keep it short and do not block in it."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    label: str = ""  # for logs, e.g. "seq=12"
    on_ack: Callable[[int], None] | None = None
    content_type: str | None = "application/json"  # MQTT 5 property; None for binary payloads
    expires: float | None = None  # wall time: MQTT 5 message expiry; not sent at all after it
    expires_mono: float | None = None  # the same on time.monotonic(); decides when it is given
    user_properties: tuple[tuple[str, str], ...] = ()  # MQTT 5 only
    correlation_data: bytes | None = None  # MQTT 5 only: echoed from a request


def remaining_s(message: OutgoingMessage) -> float | None:
    """Seconds until ``message`` expires (None: never). On the monotonic clock when it has a
    monotonic deadline: a wall clock stepped +2 h expired rejects inside their travel window,
    one stepped -3 h gave them 3 h of message expiry (issue 15)."""
    if message.expires_mono is not None:
        return message.expires_mono - time.monotonic()
    if message.expires is not None:
        return message.expires - time.time()
    return None


# -- encoding -----------------------------------------------------------------------------------


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def encode_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON. NaN/inf are not JSON: they become null, with an error logged."""
    try:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        log.error("mqtt.payload_not_finite", detail="NaN or infinity replaced by null")
        text = json.dumps(_finite(obj), separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def encode_answer(payload: dict[str, Any]) -> bytes:
    """encode_json, or, for text that is not UTF-8 (a lone surrogate: ids are checked where
    they enter, this is the last line), JSON with \\u escapes: an answer must never raise."""
    try:
        return encode_json(payload)
    except UnicodeEncodeError:
        log.error("mqtt.answer_not_utf8", detail="a lone surrogate in an answer, sent \\u-escaped")
        return json.dumps(payload, separators=(",", ":"), default=str).encode("ascii")


# -- …/status -----------------------------------------------------------------------------------


def status_payload(
    state: StationState, status_fields: dict[str, Any], t: float | None = None
) -> bytes:
    """``state`` (online, stopped, offline) with boot_id, version, product, model_sha256."""
    return encode_json(
        {"state": state, **status_fields, "ts": iso_utc(time.time() if t is None else t)}
    )


def status_message(
    topics: Topics, state: StationState, status_fields: dict[str, Any]
) -> OutgoingMessage:
    """Retained: a subscriber that comes later still learns whether the station is up."""
    return OutgoingMessage(
        topics.status,
        status_payload(state, status_fields),
        qos=1,
        retain=True,
        label=f"status={state}",
    )


# -- …/verdict and …/reject ---------------------------------------------------------------------


def reject_deadline_mono(record: VerdictRecord, travel_window_s: float) -> float:
    """``reject_deadline`` on time.monotonic(). A record without monotonic times (made outside
    the pipeline) gets its travel window from now."""
    if record.deadline_mono is not None:
        return record.deadline_mono
    if record.deadline_ts is not None:
        return time.monotonic() + (record.deadline_ts - time.time())
    return (time.monotonic() if record.t_mono is None else record.t_mono) + travel_window_s


def reject_deadline(record: VerdictRecord, travel_window_s: float) -> float:
    """Wall time after which a reject is useless: the trigger's own deadline when it gave one,
    else the part's travel window from the verdict (the part has passed the diverter)."""
    if record.deadline_ts is not None:
        return record.deadline_ts
    return record.t_verdict + travel_window_s


def verdict_messages(
    topics: Topics, record: VerdictRecord, travel_window_s: float
) -> list[OutgoingMessage]:
    """…/verdict for every record, and …/reject for NG and ERROR (what a PLC gateway acts on),
    expiring when the part has left the diverter."""
    label = f"seq={record.seq}"
    messages = [OutgoingMessage(topics.verdict, encode_json(record.to_payload()), 1, False, label)]
    if record.verdict in (Verdict.NG, Verdict.ERROR):
        deadline = reject_deadline(record, travel_window_s)
        reject = {
            "station": record.station,
            "part_id": record.part_id,
            "seq": record.seq,
            "verdict": record.verdict.value,
            "deadline_ts": iso_utc(deadline),
        }
        messages.append(
            OutgoingMessage(
                topics.reject,
                encode_json(reject),
                1,
                False,
                label,
                expires=deadline,
                expires_mono=reject_deadline_mono(record, travel_window_s),
            )
        )
    return messages


# -- …/overlay, …/health, …/stats ---------------------------------------------------------------


def overlay_message(topic: str, jpeg: bytes, record: VerdictRecord) -> OutgoingMessage:
    """QoS 0: a picture for an HMI, not a record; the part rides along in user properties."""
    return OutgoingMessage(
        topic,
        jpeg,
        qos=0,
        label=f"overlay seq={record.seq}",
        content_type="image/jpeg",
        user_properties=(
            ("part_id", record.part_id),
            ("seq", str(record.seq)),
            ("verdict", record.verdict.value),
        ),
    )


def health_message(topics: Topics, payload: bytes) -> OutgoingMessage:
    """Retained: only the latest matters, so none pile up in memory during an outage.
    ``payload`` is already encoded: the same bytes go to ``state_dir/health.json``."""
    return OutgoingMessage(topics.health, payload, qos=1, retain=True, label="health")


def stats_message(topics: Topics, stats: dict[str, Any]) -> OutgoingMessage:
    """QoS 0 and periodic: a live view, the next one replaces it."""
    return OutgoingMessage(topics.stats, encode_json(stats), qos=0, label="stats")


def teach_message(
    topics: Topics, state: str, product: str | None, kind: str | None, **fields: Any
) -> OutgoingMessage:
    """A teach's or refit's progress on …/teach: collecting, fitting, written or failed."""
    payload = {
        "state": state,
        "product": product,
        "kind": kind,
        **fields,
        "ts": iso_utc(time.time()),
    }
    return OutgoingMessage(topics.teach, encode_json(payload), qos=1, label=f"teach {state}")


# -- answers: replies and …/error ---------------------------------------------------------------

# What an answer or a log line quotes of a request is cut to this many characters: a 1 MiB field
# name or value was echoed whole in …/error (issue 31). Ids are at most 128 characters anyway.
ECHO_MAX_CHARS = 500


def bounded(text: str) -> str:
    """``text``, or its first ``ECHO_MAX_CHARS`` characters and how long it was."""
    if len(text) <= ECHO_MAX_CHARS:
        return text
    return f"{text[:ECHO_MAX_CHARS]}… ({len(text)} characters, truncated)"


def bound_echoes(fields: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``fields`` with every string ``bounded``, and the names of those that were cut."""
    cut = [k for k, v in fields.items() if isinstance(v, str) and len(v) > ECHO_MAX_CHARS]
    return {k: bounded(v) if k in cut else v for k, v in fields.items()}, cut


def command_answer(command: str, result: dict[str, Any]) -> dict[str, Any]:
    """…/cmd/<name>/result (or the response topic): a command that ran, and what it returned."""
    return {"command": command, "ok": True, **result}


def trigger_answer(
    request_id: str,
    part_id: str,
    status: str,
    verdict: Verdict,
    record: VerdictRecord | None,
    error: str | None = None,
) -> dict[str, Any]:
    """…/trigger/response (or the response topic): the part's verdict, recorded (``record``)
    or, for a ``late`` answer, the NG that rejects it before the verdict exists (no seq yet)."""
    if record is not None:
        payload = record.to_payload()
    else:
        payload = {
            "verdict": verdict.value,
            "seq": None,
            "part_id": part_id,
            "request_id": request_id,
            "late": True,
            "error": error,
        }
    return {"request_id": request_id, "part_id": part_id, "status": status, "verdict": payload}


def reply_message(
    topic: str, payload: dict[str, Any], *, source_topic: str, correlation_data: bytes | None
) -> OutgoingMessage:
    """The answer to a request (a trigger or a command), echoing its correlation data."""
    return OutgoingMessage(
        topic,
        encode_answer(payload),
        qos=1,
        label=f"reply to {source_topic}",
        correlation_data=correlation_data,
    )


def error_message(
    topics: Topics,
    code: str,
    detail: str,
    *,
    source_topic: str,
    correlation_data: bytes | None,
    t: float | None = None,
    **fields: Any,
) -> OutgoingMessage:
    """A refused request on …/error: the code, why, the topic it came on, ``fields`` (its
    request_id) and the correlation data, also as hex for 3.1.1-style readers. Text that may
    quote the request is ``bounded`` (``truncated`` names what was cut); the correlation data is
    echoed whole: it is what the requester matches on, and MQTT bounds it (64 KiB)."""
    echoed, cut = bound_echoes({"detail": detail, "topic": source_topic, **fields})
    payload: dict[str, Any] = {"error": code, **echoed}
    if cut:
        payload["truncated"] = cut
    if correlation_data is not None:
        payload["correlation_data"] = correlation_data.hex()
    payload["ts"] = iso_utc(time.time() if t is None else t)
    return OutgoingMessage(
        topics.error,
        encode_answer(payload),
        qos=1,
        label=f"error {code}",
        correlation_data=correlation_data,
    )


def set_flags(payload: bytes, **flags: bool) -> bytes:
    """Set boolean flags (``replayed``, ``durable``) in a JSON object payload, only where the key
    exists already: the outbox marks a stored verdict so when it sends it again.

    Same compact form as ``encode_json``: a JSON round trip keeps key
    order and float text, so only the flags change. Anything else passes through unchanged."""
    if not payload.startswith(b"{"):
        return payload
    try:
        obj = json.loads(payload)
    except ValueError:
        return payload
    if not isinstance(obj, dict):
        return payload
    todo = {k: v for k, v in flags.items() if k in obj and obj[k] is not v}
    if not todo:
        return payload
    obj.update(todo)
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
