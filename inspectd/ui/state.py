"""What the page shows, per station, built only from the stations' MQTT messages.

Touched from the event loop's thread only (the MQTT link hands messages over with
``call_soon_threadsafe``), so nothing here takes a lock. Verdicts are de-duplicated on
``(station, seq)`` as the contract asks: QoS 1 and replays after a crash deliver some twice.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict, deque
from datetime import datetime
from typing import Any

from paho.mqtt.client import topic_matches_sub

from inspectd.ui.histogram import score_histogram
from inspectd.ui.tally import Counting, jpeg_size

HOUR_S = 3600.0
SILENT_INTERVALS = 3  # a station's health this many of its intervals late: flagged
_SEEN = 5000  # seqs remembered for de-duplication per station
_LATENCIES = 200
_ANSWERS = 10
_LIVE_OVERLAYS = 4  # overlays kept besides the strip's: the newest parts
# topics a station publishes that the page does not show
_IGNORED = {"reject", "trigger", "trigger/response"}
# the verdict fields the page shows, for the last part and for each reject of the strip; late:
# decided after its trigger's deadline, the PLC having been answered NG at the deadline
_VERDICT_FIELDS = ("seq", "part_id", "verdict", "score", "threshold", "t_verdict", "error", "late")


def _epoch(ts: Any) -> float | None:
    if not isinstance(ts, str):
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _json(payload: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


class StationState:
    """One station: its retained status and health, recent verdicts, overlays and reviews."""

    def __init__(
        self,
        base: str,
        recent_rejects: int = 12,
        score_window: int = 500,
        counting: Counting | None = None,
    ) -> None:
        self.base = base
        self.tally = (counting or Counting()).tally(time.time())
        self.status: dict[str, Any] | None = None
        # when this page saw the state change: a Last Will's own ts is from the connect
        self.changed_at: float | None = None
        self.health: dict[str, Any] | None = None
        # time.monotonic() of the last …/health received: a wall-clock step neither fakes
        # nor hides a station gone quiet
        self.health_at: float | None = None
        self.silent = False  # online, but its health overdue (see check_silence)
        self._quiet_s = 0.0  # how long without health at the check that found it silent
        self.stats: dict[str, Any] | None = None
        self.last: dict[str, Any] | None = None
        # (t_verdict, verdict, seq) this page received in the last hour
        self._hour: deque[tuple[float, str, int]] = deque()
        # the station's own count of its last hour (…/stats last_hour), when it sent one
        self._station_hour: dict[str, Any] | None = None
        self._seen: OrderedDict[int, None] = OrderedDict()
        self.scores: deque[tuple[float, str]] = deque(maxlen=score_window)
        self.latencies: deque[float] = deque(maxlen=_LATENCIES)
        self.rejects: deque[dict[str, Any]] = deque(maxlen=recent_rejects)
        self.overlays: OrderedDict[int, bytes] = OrderedDict()  # seq -> JPEG
        self._overlay_room = recent_rejects
        self.last_overlay: dict[str, Any] | None = None  # seq, part_id, verdict of the newest
        self.reviews_today: dict[str, Any] | None = None  # from the station's answers
        # seq -> {label, by, ts}: reviews done through this page (removed by their undo)
        self.reviewed: dict[int, dict[str, Any]] = {}
        self.products: list[str] | None = None  # installed bundles, from the station's answer
        self.answers: deque[dict[str, Any]] = deque(maxlen=_ANSWERS)
        self.errors: deque[dict[str, Any]] = deque(maxlen=_ANSWERS)  # …/error not ours
        self.teach: dict[str, Any] | None = None  # the last …/teach event: a teach's progress

    @property
    def name(self) -> str:
        return (
            self.status.get("station", self.base.rsplit("/", 1)[-1])
            if self.status
            else self.base.rsplit("/", 1)[-1]
        )

    # -- messages --------------------------------------------------------------------------------

    def on_message(self, suffix: str, payload: bytes, props: dict[str, str]) -> bool:
        """One message under this station's base; True when what the page shows changed."""
        if suffix == "overlay":
            return self._on_overlay(payload, props)
        if suffix in _IGNORED or suffix.startswith("cmd/") and suffix.endswith("/set"):
            return False
        doc = _json(payload)
        if doc is None:
            return False
        if suffix == "status":
            if doc.get("state") != self.state:
                self.changed_at = time.time()
                if doc.get("state") == "online":
                    self.products = None  # a restart may come with other bundles: ask again
            self.status = doc
        elif suffix == "health":
            self.health, self.health_at = doc, time.monotonic()
            self.silent = False
        elif suffix == "stats":
            self.stats = doc
            self._take_station_hour(doc.get("last_hour"))
        elif suffix == "verdict":
            return self._on_verdict(doc)
        elif suffix == "error":
            self.errors.append(doc)
        elif suffix == "teach":
            self.teach = doc
        else:
            return False
        return True

    def _on_verdict(self, v: dict[str, Any]) -> bool:
        seq = v.get("seq")
        if not isinstance(seq, int):
            return False
        if seq in self._seen:
            return False
        self._seen[seq] = None
        if len(self._seen) > _SEEN:
            self._seen.popitem(last=False)
        verdict = str(v.get("verdict"))
        t = _epoch(v.get("t_verdict")) or time.time()
        self._hour.append((t, verdict, seq))
        self.tally.add(v, t)
        if self.last is None or seq >= self.last.get("seq", 0):
            self.last = v
        score = v.get("score")
        if isinstance(score, (int, float)):
            self.scores.append((float(score), verdict))
        if isinstance(v.get("latency_ms"), (int, float)):
            self.latencies.append(float(v["latency_ms"]))
        if verdict in ("NG", "ERROR"):
            self.rejects.appendleft(v)
        return True

    def _on_overlay(self, jpeg: bytes, props: dict[str, str]) -> bool:
        try:
            seq = int(props.get("seq", ""))
        except ValueError:  # MQTT 3.1.1 has no user properties: the newest overlay, unnamed
            seq = 0
        self.overlays[seq] = bytes(jpeg)
        # the frame's size (an overlay is the whole frame): where on the part rejects lie
        self.tally.frame_size(jpeg_size(self.overlays[seq]))
        self.overlays.move_to_end(seq)
        # with mqtt.overlays: all, OK parts' overlays must not push out those of the strip's rejects
        keep = {r.get("seq") for r in self.rejects}
        others = [s for s in self.overlays if s not in keep]
        for old in others[: max(0, len(others) - _LIVE_OVERLAYS)]:
            del self.overlays[old]
        while len(self.overlays) > self._overlay_room + _LIVE_OVERLAYS:
            self.overlays.popitem(last=False)
        self.last_overlay = {
            "seq": seq,
            "part_id": props.get("part_id"),
            "verdict": props.get("verdict"),
        }
        return True

    def on_answer(self, answer: dict[str, Any]) -> None:
        """A command's answer (ours): remembered for the page; a review's counts taken over."""
        command = answer.get("command")
        result = answer.get("result") or {}
        if command == "products":  # asked by the page's server itself, not an action
            if answer.get("ok") and isinstance(result.get("products"), list):
                self.products = [str(p) for p in result["products"]]
            return
        self.answers.appendleft(answer)
        if answer.get("ok") and isinstance(result.get("today"), dict):
            self.reviews_today = {
                "date": time.strftime("%Y-%m-%d", time.gmtime()),
                **result["today"],
            }
            seq = result.get("seq")
            if command == "review" and isinstance(seq, int):
                self.reviewed[seq] = {
                    "label": str(result.get("label")),
                    "by": answer.get("by"),
                    "ts": answer.get("ts"),
                }
            elif command == "unreview" and isinstance(seq, int):
                self.reviewed.pop(seq, None)

    # -- what the page shows -------------------------------------------------------------------

    @property
    def state(self) -> str:
        """online / offline / stopped from the retained status; unknown before any."""
        return str(self.status.get("state", "unknown")) if self.status else "unknown"

    def _take_station_hour(self, hour: Any) -> None:
        if not isinstance(hour, dict):
            return  # an older station: the page counts what it receives
        since, through = _epoch(hour.get("since")), hour.get("through_seq")
        counts = {k: hour.get(k) for k in ("OK", "NG", "ERROR")}
        if since is None or not all(isinstance(v, int) for v in (*counts.values(), through)):
            return
        self._station_hour = {"counts": counts, "since": since, "through_seq": through}

    def counts(self, now: float | None = None) -> dict[str, Any]:
        """The last hour: the station's own count (from before this page started too) plus the
        received verdicts it does not cover: newer than its ``through_seq``, or older than its
        ``since`` (a station that restarted counts from its start). Without one, only what this
        page received."""
        now = time.time() if now is None else now
        while self._hour and self._hour[0][0] < now - HOUR_S:
            self._hour.popleft()
        base = self._station_hour
        counts = dict(base["counts"]) if base else {"OK": 0, "NG": 0, "ERROR": 0}
        through, since = (base["through_seq"], base["since"]) if base else (0, now)
        for t, verdict, seq in self._hour:
            if t >= now - HOUR_S and verdict in counts and (seq > through or t < since):
                counts[verdict] += 1
        total = sum(counts.values())
        return {
            **counts,
            "total": total,
            "reject_rate": (counts["NG"] + counts["ERROR"]) / total if total else None,
            # the recent rate (inspectd.ui.tally), not the hour's average
            "per_min": self.tally.per_min(now, self.state == "online"),
        }

    def check_silence(self, now: float) -> bool:
        """True when ``silent`` changed (``now``: time.monotonic()): an online station whose
        health is SILENT_INTERVALS of its own ``interval_s`` overdue. A hung daemon whose MQTT
        thread still answers the broker's pings never triggers its Last Will; only the missing
        health shows it."""
        interval = (self.health or {}).get("interval_s")
        quiet = None if self.health_at is None else now - self.health_at
        silent = (
            self.state == "online"
            and isinstance(interval, (int, float))
            and quiet is not None
            and quiet > SILENT_INTERVALS * interval
        )
        if silent and quiet is not None:
            self._quiet_s = quiet
        changed, self.silent = silent != self.silent, silent
        return changed

    def problems(self) -> list[str]:
        problems = list((self.health or {}).get("problems") or [])
        if self.silent:
            problems.insert(
                0,
                f"no health for {self._quiet_s:.0f} s (sent every "
                f"{(self.health or {}).get('interval_s')} s): the station may be hung",
            )
        if self.tally.alarm:
            problems.insert(
                0,
                f"{self.tally.in_a_row} rejects in a row (alarm at "
                f"{self.tally.alarm_in_a_row}): check the line",
            )
        if self.state in ("offline", "stopped"):
            problems.insert(0, f"station {self.state}")
        return problems

    def _threshold(self) -> float | None:
        t = ((self.health or {}).get("thresholds") or {}).get("image")
        if t is None and self.last is not None:
            t = self.last.get("threshold")
        return t if isinstance(t, (int, float)) else None

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """The tile."""
        s = self.status or {}
        last = self.last or {}
        lat = sorted(self.latencies)
        health_state = (self.health or {}).get("state")
        return {
            "base": self.base,
            "name": self.name,
            "state": self.state,
            "health": health_state,
            "silent": self.silent,
            "attention": self.state != "online"
            or health_state == "degraded"
            or self.silent
            or self.tally.alarm,
            "alarm": self.tally.alarm,
            "product": s.get("product") or last.get("product"),
            "model": (last.get("model") or {}).get("name"),
            "model_sha256": (
                s.get("model_sha256") or (last.get("model") or {}).get("sha256") or ""
            )[:12],
            "last": {k: last.get(k) for k in (*_VERDICT_FIELDS, "latency_ms")} if last else None,
            "overlay": self._tile_overlay(),
            "counts": self.counts(now),
            "tally": self.tally.view(time.time() if now is None else now, self.state == "online"),
            "latency_ms": {
                "p50": lat[len(lat) // 2],
                "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            }
            if lat
            else None,
            "problems": self.problems(),
            "reviews_today": self.reviews_today,
            "noticed": self.changed_at,
        }

    def _tile_overlay(self) -> dict[str, Any] | None:
        """The last part's overlay once it is there (it follows its verdict by a few ms), else
        the newest one; the page captions it with its own seq."""
        last = self.last or {}
        seq = last.get("seq")
        if seq in self.overlays and seq != (self.last_overlay or {}).get("seq"):
            return {"seq": seq, "part_id": last.get("part_id"), "verdict": last.get("verdict")}
        return self.last_overlay

    def detail(self, now: float | None = None) -> dict[str, Any]:
        """The station view: the tile plus the strip, the histogram and the calibration."""
        thresholds = (self.health or {}).get("thresholds") or {}
        calibration = thresholds.get("calibration") or {}
        return {
            **self.summary(now),
            "rejects": [
                {k: v.get(k) for k in (*_VERDICT_FIELDS, "regions")}
                | {
                    "overlay": v.get("seq") in self.overlays,
                    "reviewed": self.reviewed.get(v.get("seq", -1)),
                }
                for v in self.rejects
            ],
            "last_reviewed": self.reviewed.get((self.last or {}).get("seq", -1)),
            # the live part's own overlay, never another part's beside its verdict
            "live_overlay": self._live_overlay(),
            "products": self.products,
            "histogram": self.histogram(calibration.get("quantiles") or {}),
            "thresholds": {"image": thresholds.get("image"), "pixel": thresholds.get("pixel")},
            "calibration": calibration,
            "drift": (self.health or {}).get("drift"),
            "camera": (self.health or {}).get("camera"),
            "engine": (self.health or {}).get("engine"),
            "answers": list(self.answers),
            "errors": list(self.errors),
            "teach": self.teach,
        }

    def _live_overlay(self) -> dict[str, Any] | None:
        """The overlay of the part whose verdict the station view shows, if there is one;
        under MQTT 3.1.1 (overlays without seq, kept as 0) the newest, which may be another."""
        last = self.last or {}
        if last.get("seq") in self.overlays:
            return {
                "seq": last["seq"],
                "part_id": last.get("part_id"),
                "verdict": last.get("verdict"),
            }
        if (self.last_overlay or {}).get("seq") == 0:
            return self.last_overlay
        return None

    def histogram(self, quantiles: dict[str, float]) -> dict[str, Any]:
        """Recent scores against the threshold and the calibration's good-score quantiles."""
        return score_histogram(list(self.scores), self._threshold(), quantiles)


class Line:
    """Every station under the configured base-topic patterns, created on its first message."""

    def __init__(
        self,
        patterns: tuple[str, ...],
        recent_rejects: int = 12,
        score_window: int = 500,
        counting: Counting | None = None,
    ) -> None:
        self.patterns = patterns
        self.counting = counting
        self.stations: dict[str, StationState] = {}
        self.broker: dict[str, Any] = {"connected": False, "error": "connecting"}
        self._sizes = (recent_rejects, score_window)

    def route(self, topic: str) -> tuple[str, str] | None:
        """(station base, what follows it) for a topic under one of the patterns."""
        levels = topic.split("/")
        for pattern in self.patterns:
            n = pattern.count("/") + 1
            if len(levels) > n and topic_matches_sub(pattern, "/".join(levels[:n])):
                return "/".join(levels[:n]), "/".join(levels[n:])
        return None

    def station(self, base: str) -> StationState:
        if base not in self.stations:
            self.stations[base] = StationState(base, *self._sizes, counting=self.counting)
        return self.stations[base]

    def on_message(self, topic: str, payload: bytes, props: dict[str, str]) -> str | None:
        """The base of the station whose view changed, else None."""
        routed = self.route(topic)
        if routed is None:
            return None
        base, suffix = routed
        if base not in self.stations and suffix not in ("status", "health", "verdict"):
            return None  # a station is known by what it publishes first, not by a command to it
        return base if self.station(base).on_message(suffix, payload, props) else None

    def check_silence(self, now: float | None = None) -> list[str]:
        """The bases whose health went overdue or came back since the last check (``now``:
        time.monotonic())."""
        now = time.monotonic() if now is None else now
        return [b for b, st in self.stations.items() if st.check_silence(now)]

    def snapshot(self) -> dict[str, Any]:
        return {
            "broker": self.broker,
            "stations": [self.stations[b].summary() for b in sorted(self.stations)],
        }
