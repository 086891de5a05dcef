"""The station config: one YAML file per camera station.

Every field has its default, bounds and description on one line; allowed values live in the
type (``Literal``); rules that involve several fields are model validators next to the fields.
Validation is pure: no network, no file system access, no environment variables. Relative
paths are resolved against ``context["base_dir"]`` (the config file's directory) when given.
"""

from __future__ import annotations

import ipaddress
import os
import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from inspectd.config.base import StrictModel

__all__ = [
    "ArchiveConfig",
    "ConfigPath",
    "CameraConfig",
    "CameraIsolation",
    "EngineConfig",
    "FolderCamera",
    "FolderWatch",
    "GenICamCamera",
    "GenICamRoi",
    "LoggingConfig",
    "MetricsConfig",
    "MqttConfig",
    "OpenCVCamera",
    "OutboxConfig",
    "OutputConfig",
    "ServiceConfig",
    "StationConfig",
    "StationId",
]

# Names that go into MQTT topics and file names.
NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
TOPIC_PLACEHOLDERS = ("site", "line", "station")


def _path_not_empty(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise ValueError("a path must not be empty")
    return value


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    if str(value).startswith("~"):
        raise ValueError("'~' is not expanded here; write the full path")
    base_dir = (info.context or {}).get("base_dir")
    if base_dir is None or value.is_absolute():
        return value
    return Path(os.path.normpath(Path(base_dir) / value))


# A path in the config file: relative paths are relative to the config file's directory.
ConfigPath = Annotated[Path, BeforeValidator(_path_not_empty), AfterValidator(_resolve_path)]


class StationId(StrictModel):
    """Where the station is; the three names make up its MQTT topics."""

    # fmt: off
    site: str = Field("site", pattern=NAME_PATTERN, description="Site (plant) name; letters, digits, _ and - only.")
    line: str = Field("line1", pattern=NAME_PATTERN, description="Production line name; letters, digits, _ and - only.")
    name: str = Field(pattern=NAME_PATTERN, description="Station name, unique on its line; letters, digits, _ and - only.")
    # fmt: on


class CameraIsolation(StrictModel):
    """The camera in a child process: watched, killed and restarted when it hangs or dies."""

    # fmt: off
    enabled: bool = Field(True, description="Grab in a child process; a hung or dead camera is restarted and its parts get ERROR verdicts (camera_offline) meanwhile.")
    heartbeat_timeout_s: float = Field(3.0, gt=0.5, description="Seconds without a heartbeat from the camera process before it counts as stalled and is killed.")
    restart_backoff_s: float = Field(0.5, gt=0, description="Seconds before the first restart; doubled after each failed one.")
    restart_backoff_max_s: float = Field(30.0, gt=0, description="Longest wait between restarts.")
    # fmt: on

    @model_validator(mode="after")
    def _backoff_order(self) -> CameraIsolation:
        if self.restart_backoff_max_s < self.restart_backoff_s:
            raise ValueError("restart_backoff_max_s must be >= restart_backoff_s")
        return self


def _isolate_shorthand(value: Any) -> Any:
    # "isolate: false" is short for "isolate: {enabled: false}"
    return {"enabled": value} if isinstance(value, bool) else value


# A camera's isolate section; true/false is short for {enabled: ...}.
Isolation = Annotated[CameraIsolation, BeforeValidator(_isolate_shorthand)]


class FolderWatch(StrictModel):
    """A folder other machines drop image files into: each new file is inspected once, then
    moved to done_dir (OK, NG) or failed_dir (ERROR). What was inspected is committed with its
    verdict in the outbox, so a restart or a crash neither skips a file nor inspects it twice."""

    # fmt: off
    enabled: bool = Field(False, description="Watch the folder: inspect every new file exactly once, in (mtime, name) order, and move it away afterwards.")
    settle_s: float = Field(1.0, ge=0, le=3600, description="A file is read once its size and mtime stayed the same this many seconds (still being written otherwise); 0 = at once (writers that write under an ignored name and rename).")
    poll_s: float = Field(0.5, gt=0, le=60, description="Seconds between listings of the folder when no file is waiting.")
    done_dir: ConfigPath | None = Field(None, description="Where inspected files (OK, NG) are moved; null = <path>/done. Same file system as path (a move is a rename).")
    failed_dir: ConfigPath | None = Field(None, description="Where files with an ERROR verdict (not decodable, wrong size) are moved; null = <path>/failed.")
    # fmt: on


def _watch_shorthand(value: Any) -> Any:
    # "watch: true" is short for "watch: {enabled: true}"
    return {"enabled": value} if isinstance(value, bool) else value


# A folder camera's watch section; true/false is short for {enabled: ...}.
Watch = Annotated[FolderWatch, BeforeValidator(_watch_shorthand)]


class FolderCamera(StrictModel):
    """Images read from a folder: for bring-up, replays and tests, or a watched drop folder."""

    # fmt: off
    source: Literal["folder"] = Field(description="Camera kind.")
    path: ConfigPath = Field(description="Folder to read images from.")
    pattern: str = Field("*.png,*.jpg,*.jpeg,*.bmp,*.tif,*.tiff", min_length=1, description="Comma-separated file name globs to pick up.")
    loop: bool = Field(False, description="Start over at the first image after the last one.")
    rate_hz: float = Field(0.0, ge=0, description="Images per second; 0 = as fast as the pipeline takes them.")
    trigger: Literal["free_run", "mqtt"] = Field("free_run", description="free_run = inspect every image; mqtt = one image per request on …/trigger.")
    isolate: Isolation = Field(CameraIsolation(enabled=False), description="Grab in a watched child process (off for folders: files do not hang).")
    watch: Watch = Field(FolderWatch(), description="Watched-folder mode: every new file once, moved away after its verdict; true/false is short for enabled.")
    # fmt: on

    @model_validator(mode="after")
    def _watch_rules(self) -> FolderCamera:
        w = self.watch
        if not w.enabled:
            return self
        if self.loop:
            raise ValueError("loop and watch exclude each other: loop reads every file again on "
                             "every pass, watch reads each new file once")  # fmt: skip
        if self.isolate.enabled:
            raise ValueError("a watched folder runs in the daemon's process (its bookkeeping is "
                             "in the outbox); set isolate: false")  # fmt: skip
        done = w.done_dir if w.done_dir is not None else self.path / "done"
        failed = w.failed_dir if w.failed_dir is not None else self.path / "failed"
        for key, folder in (("done_dir", done), ("failed_dir", failed)):
            if os.path.normpath(folder) == os.path.normpath(self.path):
                raise ValueError(f"watch.{key} must not be the watched folder itself")
        # the model is frozen; filling defaults during its own validation is fine
        object.__setattr__(self, "watch", w.model_copy(update={"done_dir": done, "failed_dir": failed}))
        return self

    @field_validator("pattern")
    @classmethod
    def _globs_not_empty(cls, value: str) -> str:
        globs = [g.strip() for g in value.split(",")]
        if not all(globs):
            raise ValueError(
                "an empty glob in the list; separate globs by commas, e.g. '*.png,*.jpg'"
            )
        return ",".join(globs)

    def globs(self) -> list[str]:
        """The file name globs, in order."""
        return self.pattern.split(",")


class OpenCVCamera(StrictModel):
    """A camera (or video file, or stream) read through OpenCV's VideoCapture."""

    # fmt: off
    source: Literal["opencv"] = Field(description="Camera kind.")
    device: Annotated[int, Field(ge=0)] | Annotated[str, Field(min_length=1)] = Field(description="Device index (0, 1, ...), a video file path or an rtsp:// or http:// URL.")
    width: int | None = Field(None, gt=0, description="Requested frame width in pixels; null = the device's default.")
    height: int | None = Field(None, gt=0, description="Requested frame height in pixels; null = the device's default.")
    fps: float | None = Field(None, gt=0, description="Requested frames per second; null = the device's default.")
    timeout_s: float = Field(5.0, gt=0, description="Seconds to wait for a frame before the camera counts as lost.")
    trigger: Literal["free_run", "mqtt"] = Field("free_run", description="free_run = inspect every frame; mqtt = the newest frame per request on …/trigger.")
    isolate: Isolation = Field(CameraIsolation(), description="Grab in a watched child process (VideoCapture.read blocks on RTSP drops and USB unplugs).")
    # fmt: on

    @field_validator("device", mode="before")
    @classmethod
    def _device_not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a device index (0, 1, ...), a video file path or a URL")
        return value

    @model_validator(mode="after")
    def _size_together(self) -> OpenCVCamera:
        if (self.width is None) != (self.height is None):
            raise ValueError("width and height go together: give both or neither")
        return self


# The pixel formats inspectd converts (inspectd.capture.pixels.SUPPORTED; a test keeps them equal).
GenICamPixelFormat = Literal[
    "Mono8", "Mono10", "Mono12", "Mono16", "Mono10p", "Mono12p", "Mono10Packed", "Mono12Packed",
    "BayerRG8", "BayerGR8", "BayerGB8", "BayerBG8", "RGB8", "BGR8",
]  # fmt: skip


class GenICamRoi(StrictModel):
    """The sensor region read out (the camera's Width, Height, OffsetX, OffsetY)."""

    # fmt: off
    width: int = Field(gt=0, description="Width in pixels (a multiple of the camera's Width increment).")
    height: int = Field(gt=0, description="Height in pixels (a multiple of the camera's Height increment).")
    offset_x: int = Field(0, ge=0, description="Left edge in pixels; 0 when the camera has no OffsetX.")
    offset_y: int = Field(0, ge=0, description="Top edge in pixels; 0 when the camera has no OffsetY.")
    # fmt: on


class GenICamCamera(StrictModel):
    """A GenICam camera (GigE Vision, USB3 Vision, ...) through a GenTL producer, with harvesters."""

    # fmt: off
    source: Literal["genicam"] = Field(description="Camera kind.")
    cti: ConfigPath | None = Field(None, description="GenTL producer file (.cti) of the camera vendor; null = the .cti files in the folders of GENICAM_GENTL64_PATH.")
    serial: str | None = Field(None, min_length=1, description="Pick the camera by serial number (see `inspectd cameras`); give at most one of serial, user_id, index; none = the first camera.")
    user_id: str | None = Field(None, min_length=1, description="Pick the camera by its user-defined name (DeviceUserID).")
    index: int | None = Field(None, ge=0, description="Pick the camera by its position in `inspectd cameras` (0 = first); changes when cameras are added.")
    pixel_format: GenICamPixelFormat | None = Field(None, description="PixelFormat to set; null = keep the camera's. Deeper than 8 bits is scaled to 8 bits; Bayer is demosaiced to BGR.")
    exposure_us: float | None = Field(None, gt=0, description="ExposureTime in microseconds (ExposureTimeAbs on older cameras); null = keep the camera's.")
    gain_db: float | None = Field(None, description="Gain in dB; null = keep the camera's.")
    roi: GenICamRoi | None = Field(None, description="Sensor region to read out; null = keep the camera's.")
    trigger_mode: Literal["free_run", "software", "hardware"] | None = Field(None, description="free_run = the camera streams; software = one frame per grab (TriggerSoftware; what trigger: mqtt uses); hardware = one frame per edge on trigger_line. null = software with trigger: mqtt, else free_run.")
    trigger_line: int = Field(0, ge=0, description="Input line of the hardware trigger (TriggerSource Line<n>).")
    timeout_s: float = Field(5.0, gt=0, description="Seconds to wait for a frame (after a trigger) before it counts as a frame timeout.")
    nodes: dict[str, bool | int | float | str] = Field(default_factory=dict, description="Other GenICam node settings, applied in order after the ones above; each must exist and be writable.")
    trigger: Literal["free_run", "mqtt"] = Field("free_run", description="free_run = inspect every frame; mqtt = one software-triggered frame per request on …/trigger.")
    isolate: Isolation = Field(CameraIsolation(), description="Grab in a watched child process (harvesters can hang on device loss).")
    # fmt: on

    @model_validator(mode="after")
    def _one_selector(self) -> GenICamCamera:
        given = [k for k in ("serial", "user_id", "index") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"pick the camera by one of serial, user_id, index, not {' and '.join(given)}")
        return self

    @model_validator(mode="after")
    def _trigger_modes(self) -> GenICamCamera:
        if self.trigger_mode is None:
            mode = "software" if self.trigger == "mqtt" else "free_run"
            object.__setattr__(self, "trigger_mode", mode)  # a default filled during validation
        elif self.trigger == "mqtt" and self.trigger_mode != "software":
            raise ValueError(
                f"trigger: mqtt fires the camera by software trigger; trigger_mode must be software "
                f"(or left out), not {self.trigger_mode}"
            )
        return self


# The camera section; the "source" key picks the kind. A new kind is one more member here.
CameraConfig = Annotated[FolderCamera | OpenCVCamera | GenICamCamera, Field(discriminator="source")]


class EngineConfig(StrictModel):
    """The inference runtime."""

    # fmt: off
    backend: Literal["auto", "onnxruntime", "torch", "tensorrt"] = Field("auto", description="Inference runtime; auto = TensorRT where it is installed and a CUDA GPU is present, else onnxruntime; torch runs the bundle's model.pt.")
    device: Literal["cpu", "cuda"] = Field("cpu", description="Where the model runs (onnxruntime and torch; tensorrt is always cuda).")
    threads: int = Field(0, ge=0, description="CPU threads for the runtime; 0 = all cores but one (capture and publishing get that one).")
    max_batch: int = Field(1, ge=1, le=64, description="Most frames run through the model at once.")
    precision: Literal["fp16", "fp32"] = Field("fp16", description="GPU precision: torch on cuda (fp16 autocast, scoring in fp32) and engines tensorrt rebuilds itself; CPU runs are fp32.")
    cuda_graphs: bool = Field(True, description="Capture each batch size as a CUDA graph and replay it (torch on cuda, tensorrt); eager GPU runs are launch-bound.")
    # fmt: on


class MqttTls(StrictModel):
    """TLS to the broker: on when this section is given."""

    # fmt: off
    ca_file: ConfigPath = Field(description="PEM file of the CA(s) that signed the broker's certificate.")
    cert_file: ConfigPath | None = Field(None, description="Client certificate (PEM), for brokers that require one; needs key_file.")
    key_file: ConfigPath | None = Field(None, description="Private key of cert_file (PEM, unencrypted).")
    # fmt: on

    @model_validator(mode="after")
    def _cert_and_key(self) -> MqttTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        return self


class MqttConfig(StrictModel):
    """The MQTT connection verdicts and status are published on."""

    # fmt: off
    enabled: bool = Field(True, description="Publish over MQTT at all.")
    host: str = Field("localhost", min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker TCP port.")
    protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version; a bare 5 in YAML counts as \"5\".")
    client_id: str | None = Field(None, min_length=1, description="MQTT client id; null = inspectd-<station name>.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="Seconds between keep-alive pings.")
    base_topic: str = Field("inspectd/v1/{site}/{line}/{station}", min_length=1, description="Topic prefix; placeholders {site}, {line}, {station}.")
    username: str | None = Field(None, min_length=1, description="User name for the broker; null = anonymous.")
    password: str | None = Field(None, description="Password (prefer password_file: configs get copied around).")
    password_file: ConfigPath | None = Field(None, description="File whose first line is the password.")
    tls: MqttTls | None = Field(None, description="TLS settings; null = plain TCP.")
    travel_window_s: float = Field(10.0, gt=0, description="Seconds from verdict until the part has passed the diverter: the reject's message expiry.")
    overlays: Literal["none", "ng", "all"] = Field("ng", description="Which parts get an overlay JPEG on …/overlay (QoS 0).")
    overlay_max_bytes: int = Field(262_144, ge=4096, description="Overlay JPEGs are scaled down until they fit; bigger ones are not sent.")
    health_interval_s: float = Field(30.0, gt=0, description="Seconds between …/health messages (also sent on every change).")
    stats_interval_s: float = Field(10.0, gt=0, description="Seconds between …/stats messages.")
    drain_timeout_s: float = Field(10.0, ge=0, description="On stop, seconds to wait for the broker to acknowledge stored verdicts.")
    trigger_max_bytes: int = Field(4096, ge=64, description="Largest …/trigger or …/cmd payload accepted; bigger ones are answered on …/error.")
    ack_timeout_s: float = Field(30.0, ge=1, le=3600, description="Connected, QoS 1 messages waiting and no PUBACK for this many seconds: the publisher is stuck (health problem mqtt_stalled, systemd watchdog pings stop, /healthz 503). A broker that is only gone is a disconnection, not this.")
    # fmt: on

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


class OutputConfig(StrictModel):
    """Files written next to the MQTT messages."""

    # fmt: off
    dir: ConfigPath | None = Field(None, description="Folder for verdicts.jsonl and overlay images; null = write no files.")
    overlays: Literal["none", "ng", "all"] = Field("ng", description="Which frames get an overlay image (needs dir).")
    verdicts_jsonl: bool = Field(True, description="Append every verdict to <dir>/verdicts.jsonl (needs dir).")
    jpeg_quality: int = Field(85, ge=1, le=100, description="JPEG quality of overlay images.")
    # fmt: on


class ArchiveConfig(StrictModel):
    """NG and ERROR frames kept on disk (frame PNG, anomaly map, verdict JSON), size-bounded,
    for review and ``inspectd replay``."""

    # fmt: off
    enabled: bool = Field(False, description="Keep an archive of NG and ERROR parts.")
    dir: ConfigPath | None = Field(None, description="Folder of the archive; null = <state_dir>/archive.")
    max_bytes: int = Field(2 * 1024**3, ge=1024**2, description="Most bytes the archive's files may hold; then the oldest parts are deleted (counted and logged).")
    verdicts: tuple[Literal["NG", "ERROR"], ...] = Field(("NG", "ERROR"), description="Which verdicts are archived.")
    ok_every: int = Field(0, ge=0, description="Also archive every n-th OK part (a sample of good ones); 0 = none.")
    # fmt: on


class OutboxConfig(StrictModel):
    """The durable outbox of verdicts (state_dir/outbox.db)."""

    # fmt: off
    max_rows: int = Field(100_000, ge=1, description="Most verdicts held while the broker is away; then the oldest OK ones are dropped first.")
    max_age_s: float = Field(7 * 24 * 3600.0, gt=0, description="Verdicts older than this are dropped (counted and logged).")
    in_flight: int = Field(500, ge=1, le=10_000, description="Most messages handed to the broker and not yet acknowledged.")
    sync: Literal["full", "normal"] = Field("full", description="full = fsync every commit (survives a power cut); normal = survives a killed daemon, not a power cut, and costs far less on slow disks.")
    # fmt: on


class DriftConfig(StrictModel):
    """Warn in health when good parts stop looking like the ones calibration saw."""

    # fmt: off
    enabled: bool = Field(True, description="Compare recent OK scores with calibration's score quantiles.")
    window: int = Field(500, ge=20, description="Recent OK parts compared.")
    min_parts: int = Field(100, ge=20, description="OK parts needed before drift is judged.")
    alpha: float = Field(0.001, gt=0, lt=0.5, description="False-alarm probability of one check of a steady line.")
    # fmt: on

    @model_validator(mode="after")
    def _window_holds_min_parts(self) -> DriftConfig:
        if self.min_parts > self.window:
            raise ValueError(f"min_parts ({self.min_parts}) must not exceed window ({self.window})")
        return self


class LoggingConfig(StrictModel):
    """Log output."""

    # fmt: off
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Least severe level that is logged.")
    format: Literal["auto", "json", "console"] = Field("auto", description="auto = console on a terminal, JSON lines otherwise.")
    # fmt: on


class ServiceConfig(StrictModel):
    """Running under systemd: readiness, STATUS= lines and the watchdog (sd_notify), and what
    counts as a stalled pipeline (for the watchdog and /healthz)."""

    # fmt: off
    stall_s: float = Field(30.0, ge=1, le=3600, description="A pipeline thread (capture, infer, publish) that holds work and makes no progress for this many seconds is stalled: systemd watchdog pings stop (WatchdogSec= then restarts the service) and /healthz answers 503. Idle threads (no frame, no trigger request) are never stalled; a grab gets its own timeout on top. Must exceed the longest batch inference.")
    status_interval_s: float = Field(5.0, gt=0, le=3600, description="Seconds between STATUS= updates (the line systemctl status shows).")
    # fmt: on


class MetricsConfig(StrictModel):
    """Prometheus metrics (/metrics) and liveness (/healthz) over HTTP."""

    # fmt: off
    enabled: bool = Field(False, description="Serve /metrics and /healthz over HTTP.")
    listen: str = Field("127.0.0.1", description="IP address to bind: 127.0.0.1 or ::1 = this machine only, 0.0.0.0 or :: = every interface.")
    port: int = Field(9108, ge=0, le=65535, description="TCP port; 0 = any free port (logged as metrics.listening and written to health.json). One port per station.")
    # fmt: on

    @field_validator("listen")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value.strip("[]")))
        except ValueError:
            raise ValueError("expected an IP address, e.g. 127.0.0.1, ::1 or 0.0.0.0") from None


class StationConfig(StrictModel):
    """One camera station: what it inspects, with which camera, and where results go."""

    # fmt: off
    station: StationId = Field(description="Site, line and name of this station.")
    product: str = Field(pattern=NAME_PATTERN, description="Name of the product bundle to inspect with (a folder in products_dir).")
    products_dir: ConfigPath = Field(Path("/etc/inspectd/products"), description="Folder holding the product bundles.")
    state_dir: ConfigPath = Field(Path("/var/lib/inspectd"), description="Folder for the daemon's own state.")
    camera: CameraConfig = Field(description="Where frames come from; 'source' picks the kind.")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="Inference runtime.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="MQTT connection.")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, description="Durable outbox of verdicts.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Files written by the station.")
    archive: ArchiveConfig = Field(default_factory=ArchiveConfig, description="Archive of NG and ERROR frames.")
    drift: DriftConfig = Field(default_factory=DriftConfig, description="Drift warning in health.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Log output.")
    service: ServiceConfig = Field(default_factory=ServiceConfig, description="systemd readiness, status and watchdog.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus metrics and /healthz over HTTP.")
    # fmt: on

    @model_validator(mode="after")
    def _trigger_needs_mqtt(self) -> StationConfig:
        if self.camera.trigger == "mqtt" and not self.mqtt.enabled:
            raise ValueError("camera.trigger: mqtt needs mqtt.enabled: true (requests arrive on …/trigger)")
        return self

    @model_validator(mode="after")
    def _default_client_id(self) -> StationConfig:
        if self.mqtt.client_id is None:
            mqtt = self.mqtt.model_copy(update={"client_id": f"inspectd-{self.station.name}"})
            # the model is frozen; filling a default during its own validation is fine
            object.__setattr__(self, "mqtt", mqtt)
        return self

    @model_validator(mode="after")
    def _default_archive_dir(self) -> StationConfig:
        if self.archive.dir is None:  # check-config shows the folder that will be used
            archive = self.archive.model_copy(update={"dir": self.state_dir / "archive"})
            object.__setattr__(self, "archive", archive)
        return self

    def topic_base(self) -> str:
        """``mqtt.base_topic`` with {site}, {line} and {station} filled in."""
        s = self.station
        return self.mqtt.base_topic.format(site=s.site, line=s.line, station=s.name)
