"""The ``mqtt`` section: the broker connection, its TLS subsection, and the topics."""

from __future__ import annotations

import string
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from inspectd.config.base import ConfigPath, StrictModel

TOPIC_PLACEHOLDERS = ("site", "line", "station")


class MqttTls(StrictModel):
    """TLS to the broker: on when this section is given."""

    ca_file: ConfigPath = Field(
        description="PEM file of the CA(s) that signed the broker's certificate."
    )
    cert_file: ConfigPath | None = Field(
        None, description="Client certificate (PEM), for brokers that require one; needs key_file."
    )
    key_file: ConfigPath | None = Field(
        None, description="Private key of cert_file (PEM, unencrypted)."
    )

    @model_validator(mode="after")
    def _cert_and_key(self) -> MqttTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        return self


class MqttConfig(StrictModel):
    """The MQTT connection verdicts and status are published on."""

    enabled: bool = Field(True, description="Publish over MQTT at all.")
    host: str = Field("localhost", min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker TCP port.")
    protocol: Literal["5", "3.1.1"] = Field(
        "5", description='MQTT protocol version; a bare 5 in YAML counts as "5".'
    )
    client_id: str | None = Field(
        None, min_length=1, description="MQTT client id; null = inspectd-<station name>."
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="Seconds between keep-alive pings.")
    base_topic: str = Field(
        "inspectd/v1/{site}/{line}/{station}",
        min_length=1,
        description="Topic prefix; placeholders {site}, {line}, {station}.",
    )
    username: str | None = Field(
        None, min_length=1, description="User name for the broker; null = anonymous."
    )
    password: str | None = Field(
        None, description="Password (prefer password_file: configs get copied around)."
    )
    password_file: ConfigPath | None = Field(
        None, description="File whose first line is the password."
    )
    tls: MqttTls | None = Field(None, description="TLS settings; null = plain TCP.")
    travel_window_s: float = Field(
        10.0,
        gt=0,
        description="Seconds from verdict until the part has passed the diverter: the reject's "
        "message expiry.",
    )
    overlays: Literal["none", "ng", "all"] = Field(
        "ng", description="Which parts get an overlay JPEG on …/overlay (QoS 0)."
    )
    overlay_max_bytes: int = Field(
        262_144,
        ge=4096,
        description="Overlay JPEGs are scaled down until they fit; bigger ones are not sent.",
    )
    health_interval_s: float = Field(
        30.0, gt=0, description="Seconds between …/health messages (also sent on every change)."
    )
    stats_interval_s: float = Field(10.0, gt=0, description="Seconds between …/stats messages.")
    drain_timeout_s: float = Field(
        10.0,
        ge=0,
        description="On stop, seconds to wait for the broker to acknowledge stored verdicts.",
    )
    trigger_max_bytes: int = Field(
        4096,
        ge=64,
        description="Largest …/trigger or …/cmd payload accepted; bigger ones are answered on "
        "…/error.",
    )
    ack_timeout_s: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="Connected, QoS 1 messages waiting and no PUBACK for this many seconds: the "
        "publisher is stuck (health problem mqtt_stalled, systemd watchdog pings "
        "stop, /healthz 503). A broker that is only gone is a disconnection, not this.",
    )

    @model_validator(mode="after")
    def _one_password(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and self.username is None:
            raise ValueError("a password needs a username")
        return self

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_as_text(cls, value: Any) -> Any:
        # "protocol: 5" in YAML is the integer 5
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            return str(value)
        if isinstance(value, float):
            return str(int(value)) if value.is_integer() else str(value)
        return value

    @field_validator("base_topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        if "+" in value or "#" in value:
            raise ValueError("the MQTT wildcards + and # are not allowed in a topic")
        if value.startswith("/") or value.endswith("/") or "//" in value:
            raise ValueError("empty topic level: no leading, trailing or double '/'")
        try:
            parts = list(string.Formatter().parse(value))
        except ValueError as exc:
            msg = f"bad placeholder: {exc} (write {{{{ and }}}} for literal braces)"
            raise ValueError(msg) from None
        allowed = ", ".join("{" + p + "}" for p in TOPIC_PLACEHOLDERS)
        for _, name, spec, conversion in parts:
            if name is None:
                continue
            if name not in TOPIC_PLACEHOLDERS or spec or conversion:
                raise ValueError(f"unknown placeholder {{{name}}}; allowed: {allowed}")
        return value
