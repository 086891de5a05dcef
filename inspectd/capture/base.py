"""What every capture source offers the pipeline."""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from typing import Any

from inspectd.contract.verdict import VerdictRecord
from inspectd.frame import CameraMeta, Frame

# Frame.extra key of a source that wants its part's bookkeeping committed with the verdict
# (Outbox.append_many's receipts): the watched folder's file.
RECEIPT = "receipt"


class CaptureError(Exception):
    """The source cannot be used at all (missing folder, no matching files, device not found).

    Raised by `open()` only; a single bad frame is a Frame with `error` set, never this.
    """


class CaptureSettingError(CaptureError):
    """The source's settings cannot work as written (a person must change the config), as
    opposed to a device or folder that is not there yet and may come back: the daemon exits
    with the config status instead of being restarted into the same failure."""


class EndOfStream(Exception):
    """The source has no more frames (a folder without loop, the end of a video file)."""


class CaptureTimeout(Exception):
    """No frame arrived within the timeout."""


class CaptureSource(abc.ABC):
    """A camera. `open()` may fail loudly (missing folder, no device); `grab()` never raises
    for a bad image: it returns a Frame with `error` set, so the part becomes an ERROR verdict.
    """

    camera: CameraMeta = CameraMeta(source="unknown")  # what verdicts say about the camera

    @abc.abstractmethod
    def open(self) -> None: ...

    @abc.abstractmethod
    def grab(self, timeout: float) -> Frame:
        """Next frame; raises EndOfStream when exhausted, CaptureTimeout when none came."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def recorded(self, parts: Sequence[tuple[Frame, VerdictRecord, bool]]) -> None:  # noqa: B027 (optional hook)
        """Called on the publish thread once these frames' verdicts were recorded, for frames
        with a ``RECEIPT``: (frame, record, True if its verdict and receipt are on disk)."""

    # What the source reports to the station's health (inspectd.reporting.Reporting): stats()
    # joins health's ``camera`` section (a "state" there replaces the default "ok"), problems()
    # its problems. A source in this process that works or raises has nothing to add.

    def stats(self) -> dict[str, Any]:
        return {}

    def problems(self) -> list[str]:
        return []

    def offline(self) -> str | None:
        """Why the camera cannot take a part now, or None: a trigger is then refused
        ``not_ready`` instead of queued (docs/plc.md). Cheap: asked for every trigger."""
        return None

    def __enter__(self) -> CaptureSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        while True:
            try:
                yield self.grab(timeout=5.0)
            except EndOfStream:
                return
