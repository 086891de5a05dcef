"""What arrives on …/trigger and …/cmd/<name>/set, parsed strictly on paho's network thread.

Anything a requester sends must end in a documented answer (docs/mqtt.md), never in an
exception: paho re-raises what escapes a callback, which ends its network thread, and with it
every PUBACK (bug 1 of issue 15). So the parser catches what ``json`` raises besides
ValueError (RecursionError on deep nesting), and ids are checked before anything is built
from them: a lone surrogate cannot be encoded as UTF-8 (the answer, the verdict and the outbox
row all failed on it), and control characters and noncharacters are refused by brokers in MQTT
strings (mosquitto closes the connection of a client that sends one, e.g. as the overlay's
``part_id`` user property).
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from inspectd.contract.vocabulary import ErrorCode

MAX_ID_CHARS = 128
_BOM = "\ufeff"


class RequestError(Exception):
    """A request refused with ``code`` (one of docs/mqtt.md's) and a detail for the requester."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for key, value in pairs:
        if key in body:  # which one counts would be a guess: json keeps the last, others the first
            raise _DuplicateKey(f"duplicate key {key!r}")
        body[key] = value
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json accepts NaN and Infinity


def parse_object(
    payload: bytes | bytearray, max_bytes: int, *, empty_ok: bool = False
) -> dict[str, Any]:
    """The JSON object in ``payload``; ``RequestError`` (payload_too_large, malformed_json,
    invalid_request) for anything else. ``empty_ok``: an empty payload is ``{}``."""
    if len(payload) > max_bytes:
        raise RequestError(
            ErrorCode.PAYLOAD_TOO_LARGE, f"{len(payload)} bytes, at most {max_bytes}"
        )
    try:
        # strict UTF-8: json.loads(bytes) would also take UTF-16/32 and, with "surrogatepass",
        # turn encoded surrogates into lone surrogates
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(
            ErrorCode.MALFORMED_JSON, f"not UTF-8: invalid byte at offset {exc.start}"
        ) from None
    text = text.removeprefix(_BOM)  # RFC 8259 8.1: a parser may ignore a byte order mark
    if empty_ok and not text.strip():
        return {}
    try:
        body = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except _DuplicateKey as exc:
        raise RequestError(ErrorCode.INVALID_REQUEST, str(exc)) from None
    except RecursionError:
        raise RequestError(ErrorCode.MALFORMED_JSON, "not JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, an integer of more than 4300 digits
        raise RequestError(ErrorCode.MALFORMED_JSON, f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError(
            ErrorCode.INVALID_REQUEST, f"expected a JSON object, got {_json_type(body)}"
        )
    return body


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array"


def unsafe_char(text: str) -> str | None:
    """Why ``text`` cannot be an id (the first bad character, as U+XXXX), or None."""
    for i, ch in enumerate(text):
        cp = ord(ch)
        category = unicodedata.category(ch)
        if category == "Cs":
            what = "a lone surrogate (not UTF-8)"
        elif category == "Cc":
            what = "a control character"
        elif 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE:
            what = "a noncharacter"
        else:
            continue
        return f"U+{cp:04X} at character {i} is {what}"
    return None


def id_problem(key: str, value: Any) -> str | None:
    """Why ``value`` is not a valid ``key`` (request_id, part_id), or None."""
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
        return f"{key} must be a non-empty string of at most {MAX_ID_CHARS} characters"
    bad = unsafe_char(value)
    if bad is not None:
        return (
            f"{key}: {bad}; ids must be text without control characters, surrogates "
            "or noncharacters"
        )
    return None


def safe_id(value: Any) -> str | None:
    """``value`` when it can be echoed in an answer (a valid id), else None."""
    return value if id_problem("id", value) is None else None
