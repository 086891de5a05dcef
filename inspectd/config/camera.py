"""The ``camera`` section: folder, OpenCV and GenICam cameras (``source`` picks the kind), with
their ``isolate`` (watched child process) and ``watch`` (drop folder) subsections."""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from inspectd.config.base import ConfigPath, StrictModel


class CameraIsolation(StrictModel):
    """The camera in a child process: watched, killed and restarted when it hangs or dies."""

    enabled: bool = Field(
        True,
        description="Grab in a child process; a hung or dead camera is restarted. Meanwhile "
        "free-running parts get ERROR verdicts (camera_offline) and triggers are refused "
        "not_ready.",
    )
    heartbeat_timeout_s: float = Field(
        3.0,
        gt=0.5,
        description="Seconds without a heartbeat from the camera process before it counts as "
        "stalled and is killed.",
    )
    restart_backoff_s: float = Field(
        0.5, gt=0, description="Seconds before the first restart; doubled after each failed one."
    )
    restart_backoff_max_s: float = Field(30.0, gt=0, description="Longest wait between restarts.")

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

    enabled: bool = Field(
        False,
        description="Watch the folder: inspect every new file exactly once, in (mtime, name) "
        "order, and move it away afterwards.",
    )
    settle_s: float = Field(
        1.0,
        ge=0,
        le=3600,
        description="A file is read once its size and mtime stayed the same this many seconds "
        "(still being written otherwise); 0 = at once (writers that write under an "
        "ignored name and rename).",
    )
    poll_s: float = Field(
        0.5,
        gt=0,
        le=60,
        description="Seconds between listings of the folder when no file is waiting.",
    )
    done_dir: ConfigPath | None = Field(
        None,
        description="Where inspected files (OK, NG) are moved; null = <path>/done. Same file "
        "system as path (a move is a rename).",
    )
    failed_dir: ConfigPath | None = Field(
        None,
        description="Where files with an ERROR verdict (not decodable, wrong size) are moved; "
        "null = <path>/failed.",
    )


def _watch_shorthand(value: Any) -> Any:
    # "watch: true" is short for "watch: {enabled: true}"
    return {"enabled": value} if isinstance(value, bool) else value


# A folder camera's watch section; true/false is short for {enabled: ...}.
Watch = Annotated[FolderWatch, BeforeValidator(_watch_shorthand)]


class FolderCamera(StrictModel):
    """Images read from a folder: for bring-up, replays and tests, or a watched drop folder."""

    source: Literal["folder"] = Field(description="Camera kind.")
    path: ConfigPath = Field(description="Folder to read images from.")
    pattern: str = Field(
        "*.png,*.jpg,*.jpeg,*.bmp,*.tif,*.tiff",
        min_length=1,
        description="Comma-separated file name globs to pick up.",
    )
    loop: bool = Field(False, description="Start over at the first image after the last one.")
    rate_hz: float = Field(
        0.0, ge=0, description="Images per second; 0 = as fast as the pipeline takes them."
    )
    trigger: Literal["free_run", "mqtt", "plc"] = Field(
        "free_run",
        description="free_run = inspect every image; mqtt = one image per request on …/trigger; "
        "plc = one image per PLC trigger (plc section; …/trigger too when mqtt is on).",
    )
    isolate: Isolation = Field(
        CameraIsolation(enabled=False),
        description="Grab in a watched child process (off for folders: files do not hang).",
    )
    watch: Watch = Field(
        FolderWatch(),
        description="Watched-folder mode: every new file once, moved away after its verdict; "
        "true/false is short for enabled.",
    )

    @model_validator(mode="after")
    def _watch_rules(self) -> FolderCamera:
        w = self.watch
        if not w.enabled:
            return self
        if self.loop:
            raise ValueError(
                "loop and watch exclude each other: loop reads every file again on "
                "every pass, watch reads each new file once"
            )
        if self.isolate.enabled:
            raise ValueError(
                "a watched folder runs in the daemon's process (its bookkeeping is "
                "in the outbox); set isolate: false"
            )
        done = w.done_dir if w.done_dir is not None else self.path / "done"
        failed = w.failed_dir if w.failed_dir is not None else self.path / "failed"
        for key, folder in (("done_dir", done), ("failed_dir", failed)):
            if os.path.normpath(folder) == os.path.normpath(self.path):
                raise ValueError(f"watch.{key} must not be the watched folder itself")
        # the model is frozen; filling defaults during its own validation is fine
        object.__setattr__(
            self, "watch", w.model_copy(update={"done_dir": done, "failed_dir": failed})
        )
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

    source: Literal["opencv"] = Field(description="Camera kind.")
    device: Annotated[int, Field(ge=0)] | Annotated[str, Field(min_length=1)] = Field(
        description="Device index (0, 1, ...), a video file path or an rtsp:// or http:// URL."
    )
    width: int | None = Field(
        None, gt=0, description="Requested frame width in pixels; null = the device's default."
    )
    height: int | None = Field(
        None, gt=0, description="Requested frame height in pixels; null = the device's default."
    )
    fps: float | None = Field(
        None, gt=0, description="Requested frames per second; null = the device's default."
    )
    timeout_s: float = Field(
        5.0, gt=0, description="Seconds to wait for a frame before the camera counts as lost."
    )
    trigger: Literal["free_run", "mqtt", "plc"] = Field(
        "free_run",
        description="free_run = inspect every frame; mqtt = the newest frame per request on "
        "…/trigger; plc = per PLC trigger (plc section; …/trigger too when mqtt is on).",
    )
    isolate: Isolation = Field(
        CameraIsolation(),
        description="Grab in a watched child process (VideoCapture.read blocks on RTSP drops and "
        "USB unplugs).",
    )

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
    "Mono8",
    "Mono10",
    "Mono12",
    "Mono16",
    "Mono10p",
    "Mono12p",
    "Mono10Packed",
    "Mono12Packed",
    "BayerRG8",
    "BayerGR8",
    "BayerGB8",
    "BayerBG8",
    "RGB8",
    "BGR8",
]


class GenICamRoi(StrictModel):
    """The sensor region read out (the camera's Width, Height, OffsetX, OffsetY)."""

    width: int = Field(
        gt=0, description="Width in pixels (a multiple of the camera's Width increment)."
    )
    height: int = Field(
        gt=0, description="Height in pixels (a multiple of the camera's Height increment)."
    )
    offset_x: int = Field(
        0, ge=0, description="Left edge in pixels; 0 when the camera has no OffsetX."
    )
    offset_y: int = Field(
        0, ge=0, description="Top edge in pixels; 0 when the camera has no OffsetY."
    )


class GenICamCamera(StrictModel):
    """A GenICam camera (GigE Vision, USB3 Vision, ...) through a GenTL producer (harvesters)."""

    source: Literal["genicam"] = Field(description="Camera kind.")
    cti: ConfigPath | None = Field(
        None,
        description="GenTL producer file (.cti) of the camera vendor; null = the .cti files in "
        "the folders of GENICAM_GENTL64_PATH.",
    )
    serial: str | None = Field(
        None,
        min_length=1,
        description="Pick the camera by serial number (see `inspectd cameras`); give at most one "
        "of serial, user_id, index; none = the first camera.",
    )
    user_id: str | None = Field(
        None, min_length=1, description="Pick the camera by its user-defined name (DeviceUserID)."
    )
    index: int | None = Field(
        None,
        ge=0,
        description="Pick the camera by its position in `inspectd cameras` (0 = first); changes "
        "when cameras are added.",
    )
    pixel_format: GenICamPixelFormat | None = Field(
        None,
        description="PixelFormat to set; null = keep the camera's. Deeper than 8 bits is scaled "
        "to 8 bits; Bayer is demosaiced to BGR.",
    )
    exposure_us: float | None = Field(
        None,
        gt=0,
        description="ExposureTime in microseconds (ExposureTimeAbs on older cameras); null = keep "
        "the camera's.",
    )
    gain_db: float | None = Field(None, description="Gain in dB; null = keep the camera's.")
    roi: GenICamRoi | None = Field(
        None, description="Sensor region to read out; null = keep the camera's."
    )
    trigger_mode: Literal["free_run", "software", "hardware"] | None = Field(
        None,
        description="free_run = the camera streams; software = one frame per grab "
        "(TriggerSoftware; what trigger: mqtt uses); hardware = one frame per edge on "
        "trigger_line. null = software with trigger: mqtt, else free_run.",
    )
    trigger_line: int = Field(
        0, ge=0, description="Input line of the hardware trigger (TriggerSource Line<n>)."
    )
    timeout_s: float = Field(
        5.0,
        gt=0,
        description="Seconds to wait for a frame (after a trigger) before it counts as a frame "
        "timeout.",
    )
    nodes: dict[str, bool | int | float | str] = Field(
        default_factory=dict,
        description="Other GenICam node settings, applied in order after the ones above; each "
        "must exist and be writable.",
    )
    trigger: Literal["free_run", "mqtt", "plc"] = Field(
        "free_run",
        description="free_run = inspect every frame; mqtt = one software-triggered frame per "
        "request on …/trigger; plc = per PLC trigger (plc section; …/trigger too when mqtt is "
        "on).",
    )
    isolate: Isolation = Field(
        CameraIsolation(),
        description="Grab in a watched child process (harvesters can hang on device loss).",
    )

    @model_validator(mode="after")
    def _one_selector(self) -> GenICamCamera:
        given = [k for k in ("serial", "user_id", "index") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(
                f"pick the camera by one of serial, user_id, index, not {' and '.join(given)}"
            )
        return self

    @model_validator(mode="after")
    def _trigger_modes(self) -> GenICamCamera:
        if self.trigger_mode is None:
            mode = "software" if self.trigger != "free_run" else "free_run"
            object.__setattr__(self, "trigger_mode", mode)  # a default filled during validation
        elif self.trigger != "free_run" and self.trigger_mode != "software":
            raise ValueError(
                f"trigger: {self.trigger} fires the camera by software trigger; trigger_mode "
                f"must be software (or left out), not {self.trigger_mode}"
            )
        return self


# The camera section; the "source" key picks the kind. A new kind is one more member here.
CameraConfig = Annotated[FolderCamera | OpenCVCamera | GenICamCamera, Field(discriminator="source")]
