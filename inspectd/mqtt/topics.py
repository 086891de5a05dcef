"""The topics of one station (design.md, "MQTT contract (v1)")."""

from __future__ import annotations

from dataclasses import dataclass

_MAX_TOPIC_BYTES = 65535  # an MQTT topic is a length-prefixed UTF-8 string


def _check_levels(text: str, what: str) -> None:
    if not text:
        raise ValueError(f"{what} is empty")
    if "+" in text or "#" in text:
        raise ValueError(f"{what} {text!r}: the MQTT wildcards + and # are not allowed")
    if "\x00" in text:
        raise ValueError(f"{what} {text!r}: NUL is not allowed in an MQTT topic")
    if any(level == "" for level in text.split("/")):
        raise ValueError(f"{what} {text!r}: empty topic level (leading, trailing or double '/')")


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
    def trigger(self) -> str:
        return self._sub("trigger")

    def cmd(self, name: str) -> str:
        """The topic a command is set on: ``…/cmd/<name>/set``."""
        _check_levels(name, "command name")
        if "/" in name:
            raise ValueError(f"command name {name!r}: must be one topic level")
        return self._sub(f"cmd/{name}/set")

    @property
    def cmd_filter(self) -> str:
        """Subscription filter matching every ``cmd(name)`` topic."""
        return self._sub("cmd/+/set")
