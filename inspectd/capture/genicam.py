"""GenICam cameras (GigE Vision, USB3 Vision, ...) through a GenTL producer, with harvesters.

harvesters and genicam are imported when a source opens or cameras are listed, never at import
of this module, so a daemon on a folder or OpenCV camera does not load them.

Trigger modes: `free_run` (the camera streams, grab() takes the next buffer), `software`
(grab() executes TriggerSoftware and waits for that frame: one frame per grab, which is what
`camera.trigger: mqtt` uses) and `hardware` (TriggerSource Line<n>; grab() waits for the
frame the line triggered). No frame within the timeout is CaptureTimeout.

This is a plain in-process source; running it in a child process that can be killed when
harvesters hangs on device loss is the isolation wrapper's job.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from inspectd.capture.base import CaptureError, CaptureSource, CaptureTimeout
from inspectd.capture.pixels import PixelFormatError, to_frame_image
from inspectd.frame import CameraMeta, Frame
from inspectd.names import escape_name

log = structlog.get_logger(__name__)

GENTL_PATH_ENV = "GENICAM_GENTL64_PATH"
TRIGGER_MODES = ("free_run", "software", "hardware")
_WRITABLE = (2, 4)  # GenApi EAccessMode WO, RW
_ACCESS_NAMES = {
    0: "not implemented",
    1: "not available",
    2: "write-only",
    3: "read-only",
    4: "read-write",
}


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One camera as the producer lists it (no connection needed)."""

    index: int
    vendor: str
    model: str
    serial: str
    user_id: str

    def describe(self) -> str:
        return (
            f"#{self.index} vendor={self.vendor!r} model={self.model!r} "
            f"serial={self.serial!r} user_id={self.user_id!r}"
        )


def find_producers(cti: str | os.PathLike[str] | None = None) -> list[Path]:
    """The .cti files to load: `cti` itself, or those in the folders of GENICAM_GENTL64_PATH.

    Raises CaptureError when there is none.
    """
    if cti is not None:
        path = Path(cti)
        if not path.is_file():
            raise CaptureError(f"GenTL producer file does not exist: {path}")
        return [path]
    env = os.environ.get(GENTL_PATH_ENV, "")
    found: list[Path] = []
    for entry in filter(None, env.split(os.pathsep)):
        p = Path(entry)
        if p.is_file() and p.suffix.lower() == ".cti":
            found.append(p)
        elif p.is_dir():
            found.extend(
                sorted(q for q in p.iterdir() if q.suffix.lower() == ".cti" and q.is_file())
            )
    if not found:
        where = f"{GENTL_PATH_ENV}={env!r}" if env else f"{GENTL_PATH_ENV} is not set"
        raise CaptureError(
            f"no GenTL producer (.cti) found: give camera.cti (or --cti), or install the camera "
            f"vendor's producer and set {GENTL_PATH_ENV} ({where})"
        )
    return found


def _attr(info: Any, name: str) -> str:
    try:
        value = getattr(info, name)
    except Exception:  # producers may not implement every info field
        return ""
    return "" if value is None else str(value)


def _device_infos(harvester: Any) -> list[DeviceInfo]:
    return [
        DeviceInfo(
            i,
            _attr(d, "vendor"),
            _attr(d, "model"),
            _attr(d, "serial_number"),
            _attr(d, "user_defined_name"),
        )
        for i, d in enumerate(harvester.device_info_list)
    ]


def _new_harvester(producers: list[Path]) -> Any:
    try:
        from harvesters.core import Harvester
    except ImportError as exc:
        raise CaptureError(
            f"camera.source genicam needs harvesters and genicam: pip install 'inspectd[genicam]' "
            f"({exc})"
        ) from None
    harvester = Harvester()
    try:
        for p in producers:
            harvester.add_file(str(p), check_existence=True, check_validity=True)
        harvester.update()
    except Exception as exc:
        harvester.reset()
        raise CaptureError(
            f"cannot load GenTL producer {', '.join(map(str, producers))}: {exc}"
        ) from None
    return harvester


def list_cameras(
    cti: str | os.PathLike[str] | None = None, *, pixel_format: bool = True
) -> list[tuple[DeviceInfo, str]]:
    """Every camera the producer(s) see, with its current PixelFormat ('' when not asked,
    '(busy: ...)' when the camera cannot be opened, e.g. in use by a running station)."""
    harvester = _new_harvester(find_producers(cti))
    try:
        out = []
        for info in _device_infos(harvester):
            fmt = ""
            if pixel_format:
                try:
                    ia = harvester.create(info.index)
                except Exception as exc:
                    fmt = f"(cannot open: {type(exc).__name__})"
                else:
                    try:
                        fmt = str(ia.remote_device.node_map.PixelFormat.value)
                    except Exception:
                        fmt = "?"
                    finally:
                        ia.destroy()
            out.append((info, fmt))
        return out
    finally:
        harvester.reset()


class GenICamSource(CaptureSource):
    """Frames from one GenICam camera. See the module docstring for the trigger modes."""

    def __init__(
        self,
        cti: str | os.PathLike[str] | None = None,
        *,
        serial: str | None = None,
        user_id: str | None = None,
        index: int | None = None,
        pixel_format: str | None = None,
        exposure_us: float | None = None,
        gain_db: float | None = None,
        roi: tuple[int, int, int, int] | None = None,  # width, height, offset_x, offset_y
        trigger_mode: str = "free_run",
        trigger_line: int = 0,
        timeout_s: float = 5.0,
        nodes: Mapping[str, Any] | None = None,
    ) -> None:
        if trigger_mode not in TRIGGER_MODES:
            raise ValueError(
                f"trigger_mode must be one of {', '.join(TRIGGER_MODES)}, got {trigger_mode!r}"
            )
        if sum(x is not None for x in (serial, user_id, index)) > 1:
            raise ValueError("pick the camera by one of serial, user_id, index")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.cti = None if cti is None else Path(cti)
        self.serial = serial
        self.user_id = user_id
        self.index = index
        self.pixel_format = pixel_format
        self.exposure_us = exposure_us
        self.gain_db = gain_db
        self.roi = roi
        self.trigger_mode = trigger_mode
        self.trigger_line = trigger_line
        self.timeout_s = timeout_s
        self.nodes = dict(nodes or {})
        self.camera = CameraMeta(source="genicam", serial=escape_name(serial or ""))
        self.device: DeviceInfo | None = None
        self._harvester: Any = None
        self._ia: Any = None
        self._nm: Any = None
        self._timeout_exc: tuple[type[BaseException], ...] = ()

    @classmethod
    def from_config(cls, cfg: Any) -> GenICamSource:
        """From a GenICamCamera config (or any object with its attributes)."""
        roi = getattr(cfg, "roi", None)
        return cls(
            cfg.cti,
            serial=cfg.serial,
            user_id=cfg.user_id,
            index=cfg.index,
            pixel_format=cfg.pixel_format,
            exposure_us=cfg.exposure_us,
            gain_db=cfg.gain_db,
            roi=None if roi is None else (roi.width, roi.height, roi.offset_x, roi.offset_y),
            trigger_mode=cfg.trigger_mode
            or ("software" if cfg.trigger != "free_run" else "free_run"),
            trigger_line=cfg.trigger_line,
            timeout_s=cfg.timeout_s,
            nodes=cfg.nodes,
        )

    # -- opening ---------------------------------------------------------------------------

    def _select(self, devices: list[DeviceInfo]) -> DeviceInfo:
        if self.serial is not None:
            matches, wanted = (
                [d for d in devices if d.serial == self.serial],
                f"serial {self.serial!r}",
            )
        elif self.user_id is not None:
            matches, wanted = (
                [d for d in devices if d.user_id == self.user_id],
                f"user_id {self.user_id!r}",
            )
        elif self.index is not None:
            matches, wanted = [d for d in devices if d.index == self.index], f"index {self.index}"
        else:
            matches, wanted = devices[:1], "any camera"
        listing = "; ".join(d.describe() for d in devices) or "none"
        if not matches:
            raise CaptureError(f"no GenICam camera with {wanted}; cameras found: {listing}")
        if len(matches) > 1:
            raise CaptureError(
                f"{len(matches)} GenICam cameras have {wanted}; pick one by serial. Cameras "
                f"found: {listing}"
            )
        return matches[0]

    def _node(self, name: str, *, writable: bool = True) -> Any:
        nm = self._nm
        if not nm.has_node(name):
            known = sorted(n for n in dir(nm) if not n.startswith("_") and n[:1].isupper())
            close = [n for n in known if n.lower().startswith(name.lower()[:4])][:5]
            hint = f"; similar: {', '.join(close)}" if close else ""
            raise CaptureError(f"the camera has no GenICam node {name!r}{hint}")
        node = nm.get_node(name)
        if writable:
            mode = node.get_access_mode()
            if mode not in _WRITABLE:
                raise CaptureError(
                    f"GenICam node {name!r} is {_ACCESS_NAMES.get(mode, mode)}, it cannot be set"
                )
        return node

    def _set(self, name: str, value: Any) -> None:
        node = self._node(name)
        try:
            if type(node).__name__ == "ICommand":
                if value:
                    node.execute()
                return
            if type(node).__name__ == "IEnumeration":
                symbolics = tuple(node.symbolics)
                if str(value) not in symbolics:
                    raise CaptureError(
                        f"GenICam node {name!r} cannot be {value!r}; "
                        f"allowed: {', '.join(symbolics)}"
                    )
                node.value = str(value)
            else:
                node.value = value
        except CaptureError:
            raise
        except Exception as exc:
            raise CaptureError(f"cannot set GenICam node {name} = {value!r}: {exc}") from None

    def _has(self, name: str) -> bool:
        return bool(self._nm.has_node(name))

    def _configure(self) -> None:
        if self.pixel_format is not None:
            self._set("PixelFormat", self.pixel_format)
        if self.roi is not None:
            width, height, ox, oy = self.roi
            for name in ("OffsetX", "OffsetY"):  # offsets first to 0, so any width/height fits
                if self._has(name):
                    self._set(name, 0)
            self._set("Width", width)
            self._set("Height", height)
            for name, value in (("OffsetX", ox), ("OffsetY", oy)):
                if value or self._has(name):
                    self._set(name, value)
        if self.exposure_us is not None:
            if self._has("ExposureAuto"):
                self._set("ExposureAuto", "Off")
            name = (
                "ExposureTime"
                if self._has("ExposureTime") or not self._has("ExposureTimeAbs")
                else "ExposureTimeAbs"
            )
            self._set(name, float(self.exposure_us))
        if self.gain_db is not None:
            if self._has("GainAuto"):
                self._set("GainAuto", "Off")
            self._set("Gain", float(self.gain_db))
        if (
            self._has("AcquisitionMode")
            and self._node("AcquisitionMode", writable=False).get_access_mode() in _WRITABLE
        ):
            self._set("AcquisitionMode", "Continuous")
        if self._has("TriggerSelector"):
            self._set("TriggerSelector", "FrameStart")
        if self.trigger_mode == "free_run":
            if self._has("TriggerMode"):
                self._set("TriggerMode", "Off")
        else:
            source = "Software" if self.trigger_mode == "software" else f"Line{self.trigger_line}"
            self._set("TriggerMode", "On")
            self._set("TriggerSource", source)
            if self.trigger_mode == "software":
                self._node("TriggerSoftware")
        for name, value in self.nodes.items():
            self._set(name, value)

    def open(self) -> None:
        self.close()
        producers = find_producers(self.cti)
        self._harvester = _new_harvester(producers)
        try:
            from genicam.gentl import TimeoutException

            self._timeout_exc = (TimeoutException,)
            devices = _device_infos(self._harvester)
            if not devices:
                raise CaptureError(
                    f"the GenTL producer {', '.join(map(str, producers))} sees no camera"
                )
            self.device = self._select(devices)
            try:
                self._ia = self._harvester.create(self.device.index)
            except Exception as exc:
                raise CaptureError(
                    f"cannot open GenICam camera {self.device.describe()} (in use by another "
                    f"process, or no access): {exc}"
                ) from None
            self._nm = self._ia.remote_device.node_map
            self._configure()
            pixel_format = str(self._nm.PixelFormat.value) if self._has("PixelFormat") else ""
            self.camera = CameraMeta(
                source="genicam",
                serial=escape_name(self.device.serial),
                pixel_format=escape_name(pixel_format),
                vendor=escape_name(self.device.vendor),
                model=escape_name(self.device.model),  # driver strings, escaped as file names are
            )
            self._ia.start()
        except BaseException:
            self.close()
            raise
        log.info(
            "capture.genicam.opened",
            vendor=self.device.vendor,
            model=self.device.model,
            serial=self.device.serial,
            pixel_format=self.camera.pixel_format,
            trigger_mode=self.trigger_mode,
        )

    # -- CaptureSource ---------------------------------------------------------------------

    def _drain(self) -> None:
        """Drop frames that arrived after an earlier grab gave up (software trigger only)."""
        for _ in range(16):
            buffer = self._ia.try_fetch(timeout=1e-4)
            if buffer is None:
                return
            buffer.queue()

    def grab(self, timeout: float) -> Frame:
        if self._ia is None:
            raise RuntimeError("GenICamSource.grab() called before open()")
        wait = max(1e-3, min(timeout, self.timeout_s) if timeout > 0 else self.timeout_s)
        if self.trigger_mode == "software":
            self._drain()
            self._nm.TriggerSoftware.execute()
        try:
            buffer = self._ia.fetch(timeout=wait)
        except self._timeout_exc:
            raise CaptureTimeout(f"no frame within {wait:.3f} s") from None
        t_capture, t_mono = time.time(), time.monotonic()
        with buffer:
            frame_id = int(buffer.frame_id)
            extra: dict[str, str] = {}
            try:
                extra["device_timestamp_ns"] = str(int(buffer.timestamp_ns))
            except Exception:
                pass
            image: Any = None
            error = None
            try:
                component = buffer.payload.components[0]
                image = to_frame_image(
                    component.data,
                    int(component.width),
                    int(component.height),
                    str(component.data_format),
                )
            except PixelFormatError as exc:
                error = f"bad frame from the camera: {exc}"
            except Exception as exc:  # a buffer without an image part, a short payload
                error = f"bad frame from the camera: {type(exc).__name__}: {exc}"
        return Frame(
            image=image,
            frame_id=frame_id,
            part_id=f"{self.camera.serial or 'cam'}-{frame_id:08d}",
            t_capture=t_capture,
            t_mono=t_mono,
            camera=self.camera,
            error=error,
            extra=extra,
        )

    def close(self) -> None:
        ia, harvester = self._ia, self._harvester
        self._ia = self._nm = self._harvester = None
        if ia is not None:
            try:
                ia.stop()
            except Exception:
                log.warning("capture.genicam.stop_failed", exc_info=True)
            try:
                ia.destroy()
            except Exception:
                log.warning("capture.genicam.destroy_failed", exc_info=True)
        if harvester is not None:
            try:
                harvester.reset()
            except Exception:
                log.warning("capture.genicam.reset_failed", exc_info=True)
