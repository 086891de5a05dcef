"""Messages on the pipe between a camera child process and its parent.

Small and picklable: images never travel here, only the slot of the shared-memory ring
(inspectd.capture.ring) that holds one.
"""

from __future__ import annotations

from dataclasses import dataclass

from inspectd.frame import CameraMeta

# -- parent -> child ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stop:
    """Close the source and end."""


@dataclass(frozen=True)
class Grab:
    """Trigger mode: grab one frame within ``timeout_s``, answered with ``req_id``."""

    req_id: int
    timeout_s: float


ToChild = Stop | Grab

# -- child -> parent ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Opened:
    camera: CameraMeta


@dataclass(frozen=True)
class OpenFailed:
    reason: str


@dataclass(frozen=True)
class NewRing:
    """The child made ring ``number`` (segment ``name``); the old one is to be unlinked."""

    number: int
    name: str
    slot_bytes: int


@dataclass(frozen=True)
class FrameReady:
    """A frame: its image in ``slot`` of ring ``ring`` as sequence number ``seq`` (``slot``
    None: a frame without image, e.g. a decode error), the rest of the Frame beside it.
    ``req_id``: the trigger request it answers (None in free run)."""

    ring: int
    slot: int | None
    seq: int
    shape: tuple[int, ...] | None
    dtype: str | None
    frame_id: int
    part_id: str
    t_capture: float
    t_mono: float
    camera: CameraMeta
    error: str | None
    extra: dict[str, str]
    req_id: int | None


@dataclass(frozen=True)
class Ended:
    """The source has no more frames (answering ``req_id`` in trigger mode)."""

    req_id: int | None


@dataclass(frozen=True)
class GrabTimedOut:
    req_id: int


@dataclass(frozen=True)
class Failed:
    """The source raised; the child ends after this."""

    reason: str


FromChild = Opened | OpenFailed | NewRing | FrameReady | Ended | GrabTimedOut | Failed
