"""Preprocessing (the one function) and the OK/NG decision with defect regions."""

from __future__ import annotations

import numpy as np
import pytest

from inspectd.contract.verdict import Verdict
from inspectd.decide import NonFiniteResult, decide, regions_of
from inspectd.preprocess import Geometry, PreprocessError, PreprocessSpec, preprocess


def test_bgr_frame_becomes_rgb_model_input_with_roi_and_geometry() -> None:
    frame = np.zeros((200, 300, 3), np.uint8)
    frame[50:150, 100:200] = (255, 0, 0)  # pure blue in BGR
    spec = PreprocessSpec(size=(50, 50), roi=(100, 50, 100, 100))
    inp, geo = preprocess(frame, spec)
    assert inp.shape == (50, 50, 3) and inp.dtype == np.uint8
    assert tuple(inp[25, 25]) == (0, 0, 255)  # RGB now
    assert geo == Geometry(100, 50, 2.0, 2.0)


def test_mono_frame_is_replicated_to_three_channels() -> None:
    frame = np.full((64, 64), 77, np.uint8)
    inp, _ = preprocess(frame, PreprocessSpec(size=(32, 32)))
    assert inp.shape == (32, 32, 3) and (inp == 77).all()
    inp, _ = preprocess(frame[:, :, None], PreprocessSpec(size=(32, 32)))
    assert (inp == 77).all()


@pytest.mark.parametrize(
    "image,message",
    [
        (np.zeros((10, 10, 4), np.uint8), "unsupported channel count 4"),
        (np.zeros((10, 10, 2), np.uint8), "unsupported channel count 2"),
        (np.zeros((10, 10, 3), np.uint16), "unsupported pixel type uint16"),
        (np.zeros((0, 10, 3), np.uint8), "empty image"),
        (np.zeros((10,), np.uint8), "unsupported channel count ndim=1"),
    ],
)
def test_frames_of_the_wrong_kind_are_refused_with_the_reason(
    image: np.ndarray, message: str
) -> None:
    with pytest.raises(PreprocessError, match=message):
        preprocess(image, PreprocessSpec(size=(8, 8)))


def test_frame_size_and_roi_are_checked() -> None:
    spec = PreprocessSpec(size=(8, 8), source_size=(100, 100))
    with pytest.raises(PreprocessError, match="frame is 120x100, the product expects 100x100"):
        preprocess(np.zeros((100, 120, 3), np.uint8), spec)
    spec = PreprocessSpec(size=(8, 8), roi=(50, 50, 100, 100))
    with pytest.raises(PreprocessError, match="does not fit"):
        preprocess(np.zeros((100, 100, 3), np.uint8), spec)


def test_bad_spec_is_refused() -> None:
    with pytest.raises(ValueError):
        PreprocessSpec(size=(0, 8))
    with pytest.raises(ValueError):
        PreprocessSpec(size=(8, 8), roi=(0, 0, 0, 5))


def _map_with_blobs() -> np.ndarray:
    m = np.full((64, 64), 0.01, np.float32)
    m[10:20, 30:40] = 0.5  # 100 px, peak 0.9
    m[15, 35] = 0.9
    m[50:52, 5:7] = 0.4  # 4 px
    return m


def test_decision_ng_with_regions_mapped_back_to_frame_coordinates() -> None:
    geo = Geometry(x0=100, y0=50, sx=2.0, sy=2.0)
    verdict, regions = decide(
        0.9,
        _map_with_blobs(),
        image_threshold=0.3,
        pixel_threshold=0.3,
        min_region_area=5,
        geometry=geo,
    )
    assert verdict is Verdict.NG
    assert len(regions) == 1  # the 4-pixel blob is below min_region_area
    r = regions[0]
    assert (r.x, r.y, r.w, r.h, r.area) == (160, 70, 20, 20, 400)
    assert r.peak == pytest.approx(0.9)
    both = regions_of(_map_with_blobs(), 0.3, 1, geo)
    assert [round(b.peak, 2) for b in both] == [0.9, 0.4]  # strongest first


def test_decision_ok_below_threshold_has_no_regions() -> None:
    verdict, regions = decide(
        0.2,
        _map_with_blobs(),
        image_threshold=0.95,
        pixel_threshold=0.3,
        min_region_area=1,
        geometry=Geometry(0, 0, 1, 1),
    )
    assert verdict is Verdict.OK and regions == []


def test_score_equal_to_threshold_is_ng() -> None:
    verdict, _ = decide(
        0.5,
        _map_with_blobs(),
        image_threshold=0.5,
        pixel_threshold=0.3,
        min_region_area=1,
        geometry=Geometry(0, 0, 1, 1),
    )
    assert verdict is Verdict.NG


@pytest.mark.parametrize(
    "score,poison", [(float("nan"), None), (0.1, float("nan")), (0.1, float("inf"))]
)
def test_non_finite_engine_output_is_never_ok(score: float, poison: float | None) -> None:
    m = _map_with_blobs()
    if poison is not None:
        m[0, 0] = poison
    with pytest.raises(NonFiniteResult):
        decide(
            score,
            m,
            image_threshold=0.5,
            pixel_threshold=0.3,
            min_region_area=1,
            geometry=Geometry(0, 0, 1, 1),
        )
