"""Frames/s and per-frame overhead of capture in a child process (the shared-memory ring of
IsolatedSource) vs grabbing the same source in-process, measured in one run.

    .venv/bin/python bench/capture.py [--frames 3000] [--size 512] [--genicam]

The default source is synthetic: pre-made BGR frames handed out from memory (no decode, no
sensor), so the numbers are the ring's own cost: copying into the slot in the child, the
message over the pipe, the lock, and the parent's np.copy out. It says it is a replay
(``is_live = False``), so the child waits for a free slot and no frame is dropped: every frame
is counted on both sides. ``--genicam`` grabs the GenTL simulator (genicam==1.5.0's TLSimu.cti,
512x512 Mono8 free run) instead; the simulator's own frame rate then bounds both sides.
Overhead per frame = mean time per frame isolated - mean time per frame in-process.
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np

from inspectd.capture.base import CaptureSource
from inspectd.capture.isolated import IsolatedSource
from inspectd.frame import CameraMeta, Frame


class SyntheticSource(CaptureSource):
    """Pre-made frames from memory, as fast as asked for (built in the child by the factory)."""

    is_live = False

    def __init__(self, size: int = 512, count: int = 8) -> None:
        rng = np.random.default_rng(0)
        self.frames = [rng.integers(0, 256, (size, size, 3), np.uint8) for _ in range(count)]
        self.camera = CameraMeta(source="synthetic", serial=f"{size}x{size}")
        self.n = 0

    def open(self) -> None:
        self.n = 0

    def grab(self, timeout: float) -> Frame:
        self.n += 1
        image = self.frames[self.n % len(self.frames)]
        return Frame(image, self.n, f"{self.n:08d}", time.time(), time.monotonic(), self.camera)

    def close(self) -> None:
        pass


def _genicam_source() -> CaptureSource:
    from pathlib import Path

    import genicam

    from inspectd.capture import build_source
    from inspectd.config.camera import GenICamCamera

    cti = Path(genicam.__file__).parent / "TLSimu.cti"
    return build_source(
        GenICamCamera(source="genicam", cti=cti, pixel_format="Mono8", isolate=False)
    )


def _time(source: CaptureSource, frames: int, warmup: int = 50) -> tuple[float, float]:
    """(seconds per frame, frames/s) over `frames` grabs after `warmup`."""
    for _ in range(warmup):
        source.grab(timeout=5.0)
    t0 = time.perf_counter()
    for _ in range(frames):
        frame = source.grab(timeout=5.0)
        assert frame.image is not None, frame.error
    dt = time.perf_counter() - t0
    return dt / frames, frames / dt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--genicam", action="store_true", help="the GenTL simulator instead")
    args = parser.parse_args()

    if args.genicam:
        factory = _genicam_source
        what = "GenTL simulator (TLSimu.cti), Mono8"
    else:
        factory = functools.partial(SyntheticSource, args.size)
        what = f"synthetic {args.size}x{args.size} BGR frames from memory"

    with factory() as src:
        inproc_s, inproc_fps = _time(src, args.frames)
    with IsolatedSource(factory, name="bench") as src:
        iso_s, iso_fps = _time(src, args.frames)
        dropped = src.state()["dropped"]

    overhead_ms = (iso_s - inproc_s) * 1000.0
    print(f"capture: {what}, {args.frames} frames each")
    print(f"  in-process    {inproc_fps:9.1f} frames/s  {inproc_s * 1000:7.3f} ms/frame")
    print(
        f"  isolated      {iso_fps:9.1f} frames/s  {iso_s * 1000:7.3f} ms/frame  (dropped "
        f"{dropped})"
    )
    print(
        f"  overhead      {overhead_ms:7.3f} ms/frame (target <= 0.5)   "
        f"ratio isolated/in-process time {iso_s / inproc_s:.2f}"
    )


if __name__ == "__main__":
    main()
