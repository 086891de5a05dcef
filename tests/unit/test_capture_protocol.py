"""The pipe messages between a camera child and its parent survive pickling unchanged."""

from __future__ import annotations

import pickle

from inspectd.capture.protocol import FrameReady, Grab, NewRing, Stop
from inspectd.frame import CameraMeta


def test_messages_pickle_round_trip_and_stay_frozen():
    frame = FrameReady(
        ring=0,
        slot=None,
        seq=3,
        shape=None,
        dtype=None,
        frame_id=-1,
        part_id="p",
        t_capture=1.0,
        t_mono=2.0,
        camera=CameraMeta(source="folder"),
        error="cannot decode",
        extra={"file": "p.png"},
        req_id=None,
    )
    for msg in (Stop(), Grab(4, 1.5), NewRing(1, "psm_x_r1", 8192), frame):
        assert pickle.loads(pickle.dumps(msg)) == msg
    try:
        frame.seq = 4  # type: ignore[misc]
    except AttributeError:
        pass
    else:
        raise AssertionError("FrameReady is not frozen")
