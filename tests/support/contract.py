"""docs/mqtt.md's contract table, parsed: every topic's QoS, retain flag, expiry and payload
keys, and a check that a payload has exactly the documented keys (test_messages.py checks the
message builders against it, test_station_health.py the health snapshot)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from inspectd.contract.verdict import Region, Verdict, VerdictRecord

from support.paths import REPO

DOC = REPO / "docs" / "mqtt.md"


@dataclass
class Key:
    optional: bool = False
    values: set[str] = field(default_factory=set)  # the documented values, when it lists them
    children: dict[str, Key] | None = None  # an object (or a list of objects): its keys


@dataclass
class Row:
    topic: str  # after the base topic, e.g. "status", "cmd/<name>/result"
    subscribed: bool
    qos: int
    retained: bool
    expiry: bool
    payload: str
    keys: dict[str, Key] | None  # None: the payload is not a JSON object with listed keys
    open: bool = False  # the key list ends with "...": more keys may follow


_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|([{}\[\]:,|?])|(\.\.\.)|([^"{}\[\]:,|?\s]+)')


def parse_keys(text: str) -> tuple[dict[str, Key], bool]:
    """The keys of the payload ``text`` starts with, written as in the table:
    ``{"a": "x" | "y", "b"?, "c": [{"d"}]}``.
    A quoted name right after ``{`` or ``,`` is a key (``?`` after it: optional); quoted names
    after ``:`` or ``|`` are its values. Returns (keys, open)."""
    root: dict[str, Key] = {}
    stack: list[tuple[str, dict[str, Key] | None, str | None]] = []  # (bracket, keys, last key)
    prev = ""
    top_open = False
    for m in _TOKEN.finditer(text):
        string, punct, dots = m.group(1), m.group(2), m.group(3)
        if punct in ("{", "["):
            parent = stack[-1] if stack else None
            keys: dict[str, Key] | None = None
            if punct == "{":
                if parent is None:
                    keys = root
                else:
                    owner = parent[1][parent[2]] if parent[1] is not None and parent[2] else None
                    if owner is None and parent[0] == "[" and len(stack) >= 2:
                        grand = stack[-2]
                        owner = grand[1][grand[2]] if grand[1] is not None and grand[2] else None
                    keys = {}
                    if owner is not None:
                        owner.children = keys
            stack.append((punct, keys, None))
        elif punct in ("}", "]"):
            stack.pop()
            if not stack:
                break  # the payload's object ends; the prose after it is not parsed
        elif string is not None and stack and stack[-1][0] == "{" and prev in ("{", ","):
            bracket, keys, _ = stack[-1]
            assert keys is not None
            keys[string] = Key()
            stack[-1] = (bracket, keys, string)
            prev = "key"
            continue
        elif string is not None and prev in (":", "|") and stack and stack[-1][2]:
            keys, name = stack[-1][1], stack[-1][2]
            assert keys is not None
            keys[name].values.add(string)
        elif punct == "?" and prev == "key":
            keys, name = stack[-1][1], stack[-1][2]
            assert keys is not None and name is not None
            keys[name].optional = True
        elif dots and len(stack) == 1 and prev == ",":
            top_open = True
        prev = punct or "word"  # a value, `...` or a bare word (`code`, `(hex)`)
    return root, top_open


def _cells(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def contract_table() -> dict[str, Row]:
    """docs/mqtt.md's first table, by topic."""
    rows: dict[str, Row] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `…/"):
            if rows:
                break  # the end of the table
            continue
        topic_cell, qos_cell, payload = _cells(line)
        topic = re.match(r"`…/([^`]+)`", topic_cell).group(1)  # type: ignore[union-attr]
        qos = re.match(r"(\d)", qos_cell)
        assert qos is not None, f"no QoS in {qos_cell!r}"
        keys: dict[str, Key] | None = None
        is_open = False
        brace = payload.find("{")
        if brace >= 0:
            keys, is_open = parse_keys(payload[brace:])
        rows[topic] = Row(
            topic,
            "(subscribed)" in topic_cell,
            int(qos.group(1)),
            "retained" in qos_cell,
            "expiry" in qos_cell,
            payload,
            keys,
            is_open,
        )
    return rows


TABLE = contract_table()


def check_keys(payload: dict[str, Any], keys: dict[str, Key], is_open: bool, where: str) -> None:
    required = {k for k, spec in keys.items() if not spec.optional}
    assert required <= set(payload), f"{where}: missing {sorted(required - set(payload))}"
    if not is_open:
        assert set(payload) <= set(keys), (
            f"{where}: undocumented {sorted(set(payload) - set(keys))}"
        )
    for name, spec in keys.items():
        if name not in payload:
            continue
        value = payload[name]
        if spec.values:
            assert value in spec.values, f"{where}.{name}: {value!r} not in {sorted(spec.values)}"
        if spec.children is not None:
            for item in value if isinstance(value, list) else [value]:
                check_keys(item, spec.children, False, f"{where}.{name}")


def verdict_record(verdict: Verdict, **kw: Any) -> VerdictRecord:
    """A part's record as the pipeline makes it, decided now; ``kw`` replaces any field."""
    now = time.time()
    fields: dict[str, Any] = dict(
        station="st1",
        product="button",
        part_id="P00042",
        verdict=verdict,
        score=None if verdict is Verdict.ERROR else 0.3,
        threshold=0.2,
        model_name="hybrid",
        model_sha256="ab" * 32,
        model_version=1,
        camera_serial="SIM-0001",
        frame_id=42,
        t_capture=now - 0.05,
        t_verdict=now,
        latency_ms=50.0,
        seq=42,
        t_mono=time.monotonic(),
        regions=[Region(1, 2, 3, 4, 12, 0.9)] if verdict is Verdict.NG else [],
        error="camera timeout" if verdict is Verdict.ERROR else None,
    )
    fields.update(kw)
    return VerdictRecord(**fields)
