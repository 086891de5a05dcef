"""Capture sources: a part that cannot be inspected becomes an error frame, never silence."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

import inspectd.capture.opencv as opencv_mod
import inspectd.imagefile as imagefile_mod
from inspectd.capture import (
    CaptureError,
    CaptureSource,
    CaptureTimeout,
    EndOfStream,
    FolderSource,
    OpenCVSource,
    open_source,
)
from inspectd.capture.folder import DEFAULT_PATTERN
from inspectd.capture.opencv import READ_FAILED, redact_url
from inspectd.imagefile import decode_image_file

UNDECODABLE = "cannot decode image file {} (truncated or not an image)"


def _image(h: int = 48, w: int = 64, channels: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w, channels) if channels > 1 else (h, w)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _write(path: Path, image: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(path.suffix, image, params or [])
    assert ok
    data = buf.tobytes()
    path.write_bytes(data)
    return data


def _grab_all(src: CaptureSource) -> list:
    frames = []
    while True:
        try:
            frames.append(src.grab(timeout=1.0))
        except EndOfStream:
            return frames


# -- FolderSource: order, metadata, end ---------------------------------------------------------


def test_folder_name_order_metadata_and_end(tmp_path: Path) -> None:
    for name in ["b.png", "a.jpg", "C.PNG", "d.bmp", "e.tiff"]:
        _write(tmp_path / name, _image())
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"")  # editor/rsync leftovers are no parts
    (tmp_path / "sub.png").mkdir()  # a folder is no file

    with FolderSource(tmp_path) as src:
        frames = _grab_all(src)
        with pytest.raises(EndOfStream):
            src.grab(timeout=0.1)

    assert [f.part_id for f in frames] == ["C", "a", "b", "d", "e"]  # by file name, case kept
    assert [f.frame_id for f in frames] == [1, 2, 3, 4, 5]
    for f in frames:
        assert f.error is None
        assert f.image is not None and f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8
        assert f.camera.source == "folder" and f.camera.serial == str(tmp_path)
        assert list(f.extra) == ["path"]
        assert Path(f.extra["path"]).parent == tmp_path and Path(f.extra["path"]).stem == f.part_id
        assert abs(f.t_capture - time.time()) < 60 and f.t_mono <= time.monotonic()
    png = next(f for f in frames if f.part_id == "b")
    assert np.array_equal(png.image, cv2.imread(str(tmp_path / "b.png")))


def test_folder_pattern_is_a_comma_separated_glob_list(tmp_path: Path) -> None:
    for name in ["x1.png", "x2.jpg", "y1.png"]:
        _write(tmp_path / name, _image())
    with FolderSource(tmp_path, pattern="x*.png, *.JPG") as src:
        assert [f.part_id for f in _grab_all(src)] == ["x1", "x2"]


def test_folder_iterates_with_for(tmp_path: Path) -> None:
    for i in range(3):
        _write(tmp_path / f"{i}.png", _image(seed=i))
    with FolderSource(tmp_path) as src:
        assert [f.part_id for f in src] == ["0", "1", "2"]


def test_folder_loop_relists_each_pass(tmp_path: Path) -> None:
    _write(tmp_path / "a.png", _image())
    with FolderSource(tmp_path, loop=True) as src:
        assert src.grab(timeout=1.0).part_id == "a"
        _write(tmp_path / "b.png", _image())  # seen from the next pass on
        assert src.grab(timeout=1.0).part_id == "a"
        assert src.grab(timeout=1.0).part_id == "b"
        (tmp_path / "a.png").unlink()
        ids = [src.grab(timeout=1.0) for _ in range(2)]
    assert [f.part_id for f in ids] == ["b", "b"]
    assert [f.frame_id for f in ids] == [4, 5]  # frame ids keep counting across passes
    assert all(f.error is None for f in ids)


def test_folder_loop_on_an_emptied_folder_times_out(tmp_path: Path) -> None:
    _write(tmp_path / "a.png", _image())
    with FolderSource(tmp_path, loop=True) as src:
        src.grab(timeout=1.0)
        (tmp_path / "a.png").unlink()
        t0 = time.monotonic()
        with pytest.raises(CaptureTimeout):
            src.grab(timeout=0.2)
        assert 0.15 < time.monotonic() - t0 < 2.0
        _write(tmp_path / "z.png", _image())  # a hot folder fills up again
        assert src.grab(timeout=1.0).part_id == "z"


def test_folder_rate_pacing(tmp_path: Path) -> None:
    for i in range(10):
        _write(tmp_path / f"{i:02d}.png", _image(16, 16, seed=i))
    with FolderSource(tmp_path, rate_hz=20.0) as src:
        t0 = time.monotonic()
        frames = _grab_all(src)
        elapsed = time.monotonic() - t0
    assert len(frames) == 10
    assert 0.40 <= elapsed < 2.0  # 9 intervals of 50 ms; loose, not a benchmark
    gaps = np.diff([f.t_mono for f in frames])
    assert gaps.min() > 0.03


def test_folder_rate_zero_is_unpaced(tmp_path: Path) -> None:
    for i in range(10):
        _write(tmp_path / f"{i:02d}.png", _image(16, 16, seed=i))
    with FolderSource(tmp_path, rate_hz=0.0) as src:
        t0 = time.monotonic()
        assert len(_grab_all(src)) == 10
        assert time.monotonic() - t0 < 1.0


def test_folder_frame_not_due_within_timeout_is_a_capture_timeout(tmp_path: Path) -> None:
    for name in ["a.png", "b.png"]:
        _write(tmp_path / name, _image(16, 16))
    with FolderSource(tmp_path, rate_hz=2.0) as src:
        assert src.grab(timeout=1.0).part_id == "a"
        t0 = time.monotonic()
        with pytest.raises(CaptureTimeout):
            src.grab(timeout=0.05)
        assert time.monotonic() - t0 < 0.4
        assert src.grab(timeout=1.0).part_id == "b"  # the file was not skipped


def test_folder_rejects_negative_rate(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        FolderSource(tmp_path, rate_hz=-1.0)


# -- FolderSource: bad files become error frames ------------------------------------------------


def _bad_folder(tmp_path: Path) -> Path:
    img = _image(240, 320, seed=1)
    png = _write(tmp_path / "png_ok.png", img)
    (tmp_path / "png_half.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "png_no_iend.png").write_bytes(png[:-12])
    jpg = _write(tmp_path / "jpg_ok.jpg", img)
    (tmp_path / "jpg_half.jpg").write_bytes(jpg[: len(jpg) // 2])
    (tmp_path / "jpg_no_eoi.jpg").write_bytes(jpg[:-2])
    bmp = _write(tmp_path / "bmp_ok.bmp", img)
    (tmp_path / "bmp_half.bmp").write_bytes(bmp[: len(bmp) // 2])
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("this is not a PNG\n")
    return tmp_path


def test_folder_bad_files_are_error_frames_not_exceptions(tmp_path: Path) -> None:
    with FolderSource(_bad_folder(tmp_path)) as src:
        frames = {f.part_id: f for f in _grab_all(src)}

    assert len(frames) == 10  # nothing skipped, nothing raised
    for ok in ["png_ok", "jpg_ok", "bmp_ok"]:
        assert frames[ok].error is None and frames[ok].image.shape == (240, 320, 3)
    for bad in ["png_half", "png_no_iend", "jpg_half", "jpg_no_eoi", "bmp_half", "text"]:
        f = frames[bad]
        assert f.image is None, bad
        assert f.error == UNDECODABLE.format(Path(f.extra["path"]).name), bad
    assert frames["zero"].image is None
    assert frames["zero"].error == "empty image file: zero.png"


def test_truncation_is_caught_even_if_the_decoder_returns_a_partial_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OpenCV 5's decoders return None for these, older builds a gray-padded partial image with
    # only a warning: the structural check must not depend on which.
    _bad_folder(tmp_path)

    def partial_decode(buf: np.ndarray, flags: int) -> np.ndarray:
        return np.full((240, 320, 3), 128, np.uint8)

    monkeypatch.setattr(imagefile_mod.cv2, "imdecode", partial_decode)
    for name in ["png_half.png", "png_no_iend.png", "jpg_half.jpg", "jpg_no_eoi.jpg"]:
        image, error = decode_image_file(tmp_path / name)
        assert image is None and error == UNDECODABLE.format(name)
    for name in ["png_ok.png", "jpg_ok.jpg"]:
        image, error = decode_image_file(tmp_path / name)
        assert image is not None and error is None


def test_jpeg_with_exif_thumbnail_and_trailing_padding_is_complete(tmp_path: Path) -> None:
    # A thumbnail's EOI before the main scan must not make a cut file look whole, and padding
    # after the main EOI must not make a whole file look cut.
    thumb = _write(tmp_path / "t.jpg", _image(8, 8))
    main = _write(tmp_path / "m.jpg", _image(120, 160, seed=3))
    app1 = b"Exif\x00\x00" + thumb
    segment = b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1
    with_thumb = main[:2] + segment + main[2:]
    (tmp_path / "whole.jpg").write_bytes(with_thumb + b"\x00" * 16)
    (tmp_path / "cut.jpg").write_bytes(with_thumb[: len(with_thumb) - 200])
    image, error = decode_image_file(tmp_path / "whole.jpg")
    assert error is None and image.shape == (120, 160, 3)
    image, error = decode_image_file(tmp_path / "cut.jpg")
    assert image is None and error == UNDECODABLE.format("cut.jpg")


def test_folder_true_channels_and_dtype_pass_through(tmp_path: Path) -> None:
    bgra = _image(32, 40, channels=4)
    _write(tmp_path / "a_bgra.png", bgra)
    deep = (np.arange(32 * 40, dtype=np.uint16) * 50).reshape(32, 40)
    _write(tmp_path / "b_16bit.png", deep)
    _write(tmp_path / "c_gray.png", _image(32, 40, channels=1))
    with FolderSource(tmp_path) as src:
        a, b, c = _grab_all(src)
    assert a.error is None and a.image.shape == (32, 40, 4) and a.image.dtype == np.uint8
    assert np.array_equal(a.image, bgra)
    assert b.error is None and b.image.shape == (32, 40) and b.image.dtype == np.uint16
    assert np.array_equal(b.image, deep)
    assert c.error is None and c.image.shape == (32, 40) and c.image.dtype == np.uint8


def test_folder_file_that_vanished_is_an_error_frame(tmp_path: Path) -> None:
    _write(tmp_path / "a.png", _image())
    _write(tmp_path / "b.png", _image())
    with FolderSource(tmp_path) as src:
        (tmp_path / "a.png").unlink()
        a, b = _grab_all(src)
    assert a.part_id == "a" and a.image is None and "a.png" in a.error and "vanished" in a.error
    assert b.error is None


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_folder_unreadable_file_is_an_error_frame_with_the_os_reason(tmp_path: Path) -> None:
    path = tmp_path / "locked.png"
    _write(path, _image())
    path.chmod(0)
    try:
        with FolderSource(tmp_path) as src:
            (frame,) = _grab_all(src)
    finally:
        path.chmod(0o644)
    assert frame.image is None
    assert frame.error == "cannot read image file locked.png: Permission denied"


def test_folder_missing_empty_or_not_a_folder_raises_capture_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(CaptureError, match="nope"):
        FolderSource(missing).open()

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(CaptureError) as info:
        FolderSource(empty).open()
    assert str(empty) in str(info.value) and DEFAULT_PATTERN in str(info.value)

    a_file = tmp_path / "file.png"
    _write(a_file, _image())
    with pytest.raises(CaptureError, match="file.png"):
        FolderSource(a_file).open()


def test_folder_grab_before_open_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        FolderSource(tmp_path).grab(timeout=0.1)


# -- OpenCVSource ------------------------------------------------------------------------------


def _write_video(path: Path, n: int = 7, size: tuple[int, int] = (64, 48)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    assert writer.isOpened(), "this OpenCV build cannot write MJPG/AVI"
    try:
        for i in range(n):
            writer.write(np.full((size[1], size[0], 3), 20 * i, np.uint8))
    finally:
        writer.release()


def test_opencv_video_file_frames_then_end_of_stream(tmp_path: Path) -> None:
    video = tmp_path / "parts.avi"
    _write_video(video)
    with OpenCVSource(str(video)) as src:
        frames = _grab_all(src)
        with pytest.raises(EndOfStream):
            src.grab(timeout=0.1)
    assert len(frames) == 7
    assert [f.part_id for f in frames] == [f"{i:08d}" for i in range(1, 8)]
    assert [f.frame_id for f in frames] == list(range(1, 8))
    for i, f in enumerate(frames):
        assert f.error is None
        assert f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8
        assert abs(float(f.image.mean()) - 20 * i) < 4  # the frames in order (MJPG is lossy)
        assert f.camera.source == "opencv" and f.camera.serial == str(video)


def test_opencv_settings_a_file_ignores_do_not_fail(tmp_path: Path) -> None:
    video = tmp_path / "parts.avi"
    _write_video(video, n=2)
    with OpenCVSource(str(video), width=1920, height=1080, fps=60.0) as src:
        assert len(_grab_all(src)) == 2


def test_opencv_open_failures_raise_capture_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.avi"
    with pytest.raises(CaptureError, match="does not exist") as info:
        OpenCVSource(str(missing)).open()
    assert str(missing) in str(info.value)

    not_video = tmp_path / "notes.avi"
    not_video.write_text("not a video")
    with pytest.raises(CaptureError, match="notes.avi"):
        OpenCVSource(str(not_video)).open()

    with pytest.raises(CaptureError, match="/dev/video_inspectd_nope"):
        OpenCVSource("/dev/video_inspectd_nope").open()

    with pytest.raises(CaptureError, match="97"):
        OpenCVSource(97).open()


class _FakeCapture:
    """A live camera whose reads fail on cue."""

    script: list[bool] = []  # per read: True = a frame, False = a failed read
    opened = 0

    def __init__(self, *args: object) -> None:
        type(self).opened += 1

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.script.pop(0):
            return True, np.zeros((4, 6, 3), np.uint8)
        return False, None

    def set(self, prop: int, value: float) -> bool:
        return True

    def get(self, prop: int) -> float:
        return 0.0

    def getBackendName(self) -> str:  # noqa: N802 - OpenCV's name
        return "FAKE"

    def release(self) -> None:
        pass


def test_opencv_live_read_failure_is_an_error_frame_then_reopens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(opencv_mod.cv2, "VideoCapture", _FakeCapture)
    _FakeCapture.script = [True, False, True]
    _FakeCapture.opened = 0
    with OpenCVSource(0) as src:
        good, bad, again = (src.grab(timeout=1.0) for _ in range(3))
    assert good.error is None and good.image.shape == (4, 6, 3)
    assert bad.image is None and bad.error == READ_FAILED and bad.part_id == "00000002"
    assert again.error is None and again.frame_id == 3
    assert _FakeCapture.opened == 2  # opened, then reopened once after the failed read


def test_redact_url_hides_passwords() -> None:
    assert redact_url("rtsp://op:s3cr@t@cam-7:554/stream") == "rtsp://op:***@cam-7:554/stream"
    assert redact_url("rtsp://cam-7/stream") == "rtsp://cam-7/stream"
    assert redact_url("/data/parts.avi") == "/data/parts.avi"
    src = OpenCVSource("rtsp://op:secret@cam-7/stream")
    assert "secret" not in src.camera.serial


# -- open_source -------------------------------------------------------------------------------


def test_open_source_folder(tmp_path: Path) -> None:
    _write(tmp_path / "a.png", _image())
    cfg = SimpleNamespace(
        source="folder", path=str(tmp_path), pattern="*.png", loop=False, rate_hz=0.0
    )
    src = open_source(cfg)
    assert isinstance(src, FolderSource)
    assert src.path == tmp_path and src.pattern == "*.png" and not src.loop
    with src:
        assert [f.part_id for f in _grab_all(src)] == ["a"]


def test_open_source_opencv(tmp_path: Path) -> None:
    video = tmp_path / "v.avi"
    _write_video(video, n=3)
    cfg = SimpleNamespace(
        source="opencv", device=str(video), width=None, height=None, fps=None, timeout_s=2.0
    )
    src = open_source(cfg)
    assert isinstance(src, OpenCVSource) and src.timeout_s == 2.0
    with src:
        assert len(_grab_all(src)) == 3


def test_open_source_unknown_kind() -> None:
    with pytest.raises(ValueError, match="pigeon"):
        open_source(SimpleNamespace(source="pigeon"))
