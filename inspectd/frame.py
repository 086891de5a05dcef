"""The unit that travels from a capture source to the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class CameraMeta:
    """What a verdict says about the camera that took the frame."""

    source: str  # "folder", "opencv", "genicam"
    serial: str = ""  # camera serial, device path or folder path
    pixel_format: str = ""
    vendor: str = ""  # camera maker and model, where the source knows them (genicam)
    model: str = ""


@dataclass(frozen=True, slots=True)
class TriggerRequest:
    """An inspection asked for over MQTT (…/trigger); None for free-running sources."""

    request_id: str
    part_id: str
    deadline_mono: float | None = None  # time.monotonic() after which the answer is useless


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured image, or the reason there is none.

    `image` is uint8, HxW (mono) or HxWx3 in OpenCV's BGR order; every other shape or dtype is
    rejected by preprocessing with an ERROR verdict, never guessed at. A source that could not
    produce or decode an image still yields a Frame, with `image=None` and `error` saying why,
    so that the part gets an ERROR verdict instead of silence.
    """

    image: np.ndarray | None
    frame_id: int
    part_id: str
    t_capture: float  # wall clock (time.time()), for messages
    t_mono: float  # time.monotonic() at capture, for latency
    camera: CameraMeta
    request: TriggerRequest | None = None
    error: str | None = None
    extra: dict[str, str] = field(default_factory=dict)  # e.g. the file a folder frame came from
