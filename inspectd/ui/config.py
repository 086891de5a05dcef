"""The UI's config (``inspectd ui --config ui.yaml``): where it listens, which broker and stations,
who may see and who may act. Validation is pure; secret files are read by ``load_ui_config``
after it, at start-up."""

from __future__ import annotations

import ipaddress
import os
import re
from datetime import time
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from inspectd.config.base import NAME_PATTERN, ConfigPath, StrictModel, is_loopback
from inspectd.config.loader import ConfigError, load_yaml_model
from inspectd.config.mqtt import MqttTls
from inspectd.mqtt import login
from inspectd.ui.tally import Counting

__all__ = ["AccessConfig", "Role", "TokenEntry", "UiConfig", "UserEntry", "load_ui_config"]

Role = Literal["viewer", "operator"]


class ListenConfig(StrictModel):
    """Where the page is served."""

    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address to bind; anything but a loopback address needs access.users or "
        "access.tokens.",
    )
    port: int = Field(8480, ge=1, le=65535, description="TCP port.")
    hosts: tuple[str, ...] = Field(
        (),
        description="Names (or addresses) browsers reach the page by, besides the loopback names "
        "and `host`, e.g. a proxy's public name. A request with any other Host header is refused "
        "(400): a page from another site whose name resolves here (DNS rebinding) gets nothing.",
    )
    tls_cert_file: ConfigPath | None = Field(
        None,
        description="HTTPS directly: certificate chain (PEM); needs tls_key_file. Else plain "
        "HTTP, behind a TLS reverse proxy (docs/ui.md).",
    )
    tls_key_file: ConfigPath | None = Field(None, description="Private key of tls_cert_file (PEM).")

    @model_validator(mode="after")
    def _cert_and_key(self) -> ListenConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: give both or neither")
        return self

    @field_validator("hosts")
    @classmethod
    def _plain_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [h for h in value if not (HOST_NAME.fullmatch(h) or _is_address(h))]
        if bad:
            raise ValueError(f"{bad[0]!r}: a host name or address, without port or wildcard")
        return value

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def allowed_hosts(self) -> list[str]:
        """The Host header names the page answers to (a wildcard bind address is no name)."""
        return sorted({*LOOPBACK_NAMES, self.host, *self.hosts} - {"0.0.0.0", "::"})


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
HOST_NAME = re.compile(r"[A-Za-z0-9.-]+")  # a name or IPv4 address: no port, no wildcard


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class UiMqtt(StrictModel):
    """The broker the stations publish to; the UI subscribes there and sends commands."""

    host: str = Field("localhost", min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker TCP port.")
    protocol: Literal["5", "3.1.1"] = Field(
        "5",
        description="MQTT 5 gives overlays their part ids and command answers their own topic; "
        "3.1.1 works with less.",
    )
    client_id: str | None = Field(
        None, min_length=1, description="MQTT client id; null = inspectd-ui-<random>."
    )
    username: str | None = Field(
        None, min_length=1, description="User name for the broker; null = anonymous."
    )
    password_file: ConfigPath | None = Field(
        None, description="File whose first line is the broker password."
    )
    tls: MqttTls | None = Field(None, description="TLS to the broker; null = plain TCP.")

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class UserEntry(StrictModel):
    """A person, logging in with HTTP Basic (the browser's own prompt)."""

    name: str = Field(pattern=NAME_PATTERN, description="Login name.")
    role: Role = Field(
        description="viewer = sees everything; operator = also reviews parts and sends commands."
    )
    password_hash: str | None = Field(None, description="From `inspectd ui --hash-password`.")
    password_hash_file: ConfigPath | None = Field(None, description="File holding the hash.")
    password_hash_credential: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="systemd credential ($CREDENTIALS_DIRECTORY/<name>) holding the hash.",
    )

    @model_validator(mode="after")
    def _one_secret(self) -> UserEntry:
        _exactly_one(self, ("password_hash", "password_hash_file", "password_hash_credential"))
        return self


class TokenEntry(StrictModel):
    """A bearer token, for a wall display (``/?token=…`` once: kept as a cookie) or scripts."""

    name: str = Field(pattern=NAME_PATTERN, description="What the token is for (shown in the log).")
    role: Role = Field(description="viewer or operator.")
    token_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="sha256 (hex) of the token."
    )
    token_file: ConfigPath | None = Field(None, description="File holding the token itself.")
    token_credential: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="systemd credential ($CREDENTIALS_DIRECTORY/<name>) holding the token.",
    )

    @model_validator(mode="after")
    def _one_secret(self) -> TokenEntry:
        _exactly_one(self, ("token_sha256", "token_file", "token_credential"))
        return self


def _exactly_one(model: StrictModel, keys: tuple[str, ...]) -> None:
    given = [k for k in keys if getattr(model, k) is not None]
    if len(given) != 1:
        raise ValueError(
            f"give exactly one of {', '.join(keys)}"
            + (f" (got {', '.join(given)})" if given else "")
        )


class AccessConfig(StrictModel):
    """Who may look and who may act. Empty on 127.0.0.1: whoever reaches the port is an operator."""

    users: tuple[UserEntry, ...] = Field((), description="People (HTTP Basic).")
    tokens: tuple[TokenEntry, ...] = Field((), description="Bearer tokens.")

    @property
    def empty(self) -> bool:
        return not self.users and not self.tokens


class ShiftEntry(StrictModel):
    """A shift: the page counts from its start until the next shift's."""

    name: str = Field(pattern=NAME_PATTERN, description="What the shift is called (early, A, ...).")
    start: str = Field(description="Local start time, HH:MM (24 h), in `timezone`.")

    @field_validator("start")
    @classmethod
    def _time_of_day(cls, value: str) -> str:
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?", value):
            raise ValueError("not a time of day: HH:MM from 00:00 to 23:59 (or HH:MM:SS)")
        return value

    def at(self) -> time:
        return time.fromisoformat(self.start)


class UiConfig(StrictModel):
    """`inspectd ui`: one page for the stations of a line."""

    # access before listen: listen's check reads it
    access: AccessConfig = Field(AccessConfig(), description="Credentials; required off loopback.")
    listen: ListenConfig = Field(
        ListenConfig(), validate_default=True, description="Where the page is served."
    )
    mqtt: UiMqtt = Field(UiMqtt(), description="The stations' broker.")
    stations: tuple[str, ...] = Field(
        ("inspectd/v1/+/+/+",),
        min_length=1,
        description="Station base topics (mqtt.base_topic of each station); '+' matches one level.",
    )
    recent_rejects: int = Field(
        12,
        ge=1,
        le=100,
        description="NG and ERROR parts kept per station for the strip (with their overlays).",
    )
    score_window: int = Field(
        500, ge=10, le=10000, description="Recent scores per station in the histogram."
    )
    shifts: tuple[ShiftEntry, ...] = Field(
        (),
        description="Shift starts; each station's counts by shift (none: no shift counts).",
    )
    timezone: str | None = Field(
        None,
        description="IANA time zone of the shift starts (Europe/Berlin); null = the server's.",
    )
    alarm_rejects_in_a_row: int = Field(
        5, ge=0, le=10000, description="Flag a station after this many rejects in a row; 0 = off."
    )
    review_timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="How long to wait for a station's answer to a review or command.",
    )

    @field_validator("shifts")
    @classmethod
    def _distinct_starts(cls, value: tuple[ShiftEntry, ...]) -> tuple[ShiftEntry, ...]:
        starts = [s.at() for s in value]
        if len(set(starts)) != len(starts):
            raise ValueError("two shifts start at the same time")
        if len({s.name for s in value}) != len(value):
            raise ValueError("two shifts have the same name")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    "not a time zone: an IANA name such as Europe/Berlin or UTC"
                ) from None
        return value

    def counting(self) -> Counting:
        """How the stations' counts are kept (inspectd.ui.tally)."""
        starts = sorted(((s.name, s.at()) for s in self.shifts), key=lambda x: x[1])
        return Counting(
            starts or None,
            ZoneInfo(self.timezone) if self.timezone else None,
            self.alarm_rejects_in_a_row,
        )

    @field_validator("stations")
    @classmethod
    def _check_bases(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for base in value:
            levels = base.split("/")
            if "#" in base or any(not level for level in levels):
                raise ValueError(f"{base!r}: a base topic has no '#' and no empty level")
            if any("+" in level and level != "+" for level in levels):
                raise ValueError(f"{base!r}: '+' must be a whole level")
        return value

    @field_validator("listen")
    @classmethod
    def _credentials_off_loopback(cls, value: ListenConfig, info: ValidationInfo) -> ListenConfig:
        access = info.data.get("access")
        if access is None:  # access itself is wrong: its own error says so
            return value
        if not value.loopback and access.empty:
            raise ValueError(
                f"host {value.host} is not a loopback address: refusing to serve the line "
                "without credentials; add access.users or access.tokens (docs/ui.md)"
            )
        return value


def load_ui_config(
    path: str | os.PathLike[str] | None, overrides: dict[str, Any] | None = None
) -> UiConfig:
    """The config file (defaults without one) with command-line ``overrides`` (section -> keys)
    on top, validated, and its secret files checked readable. Raises ConfigError."""
    name = os.fspath(path) if path is not None else "inspectd ui"
    data: dict[str, Any] = {}
    if path is not None:
        cfg = load_yaml_model(path, UiConfig)  # file:line:column key: errors
        data = cfg.model_dump(mode="json", exclude_unset=True)
    if overrides or path is None:
        for key, value in (overrides or {}).items():
            data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
        try:
            cfg = UiConfig.model_validate(data, context={"base_dir": Path.cwd()})
        except ValidationError as exc:  # from a command-line option: no file position to give
            raise ConfigError(
                name,
                [
                    f"{name}: {'.'.join(str(p) for p in e['loc'])}: "
                    f"{e['msg'].removeprefix('Value error, ')}"
                    for e in exc.errors(include_url=False)
                ],
            ) from None
    check_secret_files(cfg, name)
    return cfg


def credential_path(name: str) -> Path | None:
    """$CREDENTIALS_DIRECTORY/<name>, where systemd's LoadCredential= puts it; None without it."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    return Path(directory) / name if directory else None


def check_secret_files(cfg: UiConfig, name: str) -> None:
    """Every secret file and credential readable now, not at the first login."""
    problems = []
    for kind, entries, fields in (
        ("users", cfg.access.users, ("password_hash_file", "password_hash_credential")),
        ("tokens", cfg.access.tokens, ("token_file", "token_credential")),
    ):
        for i, entry in enumerate(entries):
            for field in fields:
                value = getattr(entry, field)
                if value is None:
                    continue
                target = credential_path(value) if field.endswith("credential") else Path(value)
                where = f"{name}: access.{kind}[{i}].{field}"
                if target is None:
                    problems.append(
                        f"{where}: {value!r}: $CREDENTIALS_DIRECTORY is not set "
                        "(LoadCredential= in the unit)"
                    )
                elif not os.access(target, os.R_OK) or not target.is_file():
                    problems.append(f"{where}: {target}: not a readable file")
    if cfg.mqtt.password_file is not None:
        try:  # the daemon's rule (inspectd.mqtt.login): the first line, never an empty file
            login.read_password(cfg.mqtt.password_file)
        except login.LoginError as exc:
            problems.append(f"{name}: {exc}")
    if problems:
        raise ConfigError(name, problems)
