"""The topics of one station (design.md, "MQTT contract (v1)")."""

from __future__ import annotations

from dataclasses import dataclass

_MAX_TOPIC_BYTES = 65535  # an MQTT topic is a length-prefixed UTF-8 string


def topic_problem(topic: str) -> str | None:
    """Why one cannot publish on ``topic`` (empty, a wildcard, NUL), or None. The one check of
    this kind: for the station's own topics and for the response topics requesters name."""
    if not topic:
        return "empty"
    if "+" in topic or "#" in topic:
        return "the MQTT wildcards + and # are not allowed"
    if "\x00" in topic:
        return "NUL is not allowed in an MQTT topic"
    return None


def _check_levels(text: str, what: str) -> None:
    problem = topic_problem(text)
    if problem is not None:
        raise ValueError(f"{what} is empty" if not text else f"{what} {text!r}: {problem}")
    if any(level == "" for level in text.split("/")):
        raise ValueError(f"{what} {text!r}: empty topic level (leading, trailing or double '/')")


def command_topic(topic: str) -> tuple[str, str, str] | None:
    """(base, command name, "set" or "result") of ``<base>/cmd/<name>/set|result``, else None."""
    base, sep, rest = topic.rpartition("/cmd/")
    name, slash, kind = rest.partition("/")
    if not sep or not base or not name or not slash or kind not in ("set", "result"):
        return None
    return base, name, kind


@dataclass(frozen=True)
class Topics:
    """Every topic of a station, from its base, e.g. ``inspectd/v1/site/line1/st1``."""

    base: str

    def __post_init__(self) -> None:
        _check_levels(self.base, "base topic")
        if self.base.startswith("$"):
            raise ValueError(f"base topic {self.base!r}: topics starting with '$' are the broker's")
        if len(self.base.encode("utf-8")) > _MAX_TOPIC_BYTES - 64:
            raise ValueError("base topic is too long for MQTT")

    def contains(self, topic: str) -> bool:
        """Whether ``topic`` is the base or under it: where only the station publishes."""
        return topic == self.base or topic.startswith(f"{self.base}/")

    def _sub(self, name: str) -> str:
        return f"{self.base}/{name}"

    @property
    def status(self) -> str:
        return self._sub("status")

    @property
    def verdict(self) -> str:
        return self._sub("verdict")

    @property
    def reject(self) -> str:
        return self._sub("reject")

    @property
    def overlay(self) -> str:
        return self._sub("overlay")

    @property
    def health(self) -> str:
        return self._sub("health")

    @property
    def stats(self) -> str:
        return self._sub("stats")

    @property
    def error(self) -> str:
        return self._sub("error")

    @property
    def teach(self) -> str:
        """Events of a teach or refit (docs/mqtt.md#teaching)."""
        return self._sub("teach")

    @property
    def trigger(self) -> str:
        return self._sub("trigger")

    def cmd(self, name: str, kind: str = "set") -> str:
        """A command's topic: ``…/cmd/<name>/set`` (it is asked there) or, with ``kind``
        "result", ``…/cmd/<name>/result`` (where a 3.1.1 requester gets the answer)."""
        _check_levels(name, "command name")
        if "/" in name:
            raise ValueError(f"command name {name!r}: must be one topic level")
        if kind not in ("set", "result"):
            raise ValueError(f"a command topic ends in set or result, not {kind!r}")
        return self._sub(f"cmd/{name}/{kind}")

    @property
    def cmd_filter(self) -> str:
        """Subscription filter matching every ``cmd(name)`` topic."""
        return self._sub("cmd/+/set")
